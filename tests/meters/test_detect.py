"""detect_meters: zeus's rule (auto skips and says why once; asked-for meters fail loudly),
settings, GPUs, and the dependency rule."""

import dataclasses
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ecoq.config import MetersSettings
from ecoq.errors import MeterUnavailable, ValidationError
from ecoq.meters import MeterDefaults, detect_meters
from ecoq.meters.process import AttributedMeter, ProcessTree
from tests.meters.fakes import FakeGpu, FakeNvml, laptop_tree


def settings(tmp_path: Path, **kw: object) -> MeterDefaults:
    return MeterDefaults(**{"powercap_root": str(tmp_path / "powercap"), **kw})  # type: ignore[arg-type]


def devices(found) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    return [(m.description.device, m.description.method) for m in found.meters]


def test_auto_with_every_counter(tmp_path: Path) -> None:
    laptop_tree(tmp_path / "powercap")
    nvml = FakeNvml([FakeGpu(uuid="GPU-a"), FakeGpu(uuid="GPU-b", energy_mj=None)])
    found = detect_meters(
        settings=settings(tmp_path), process=os.getpid(), nvml_module=nvml, env={}
    )
    assert devices(found) == [
        ("gpu:0", "counter"),
        ("gpu:1", "power-integration"),
        ("cpu", "counter"),
        ("ram", "estimate"),
    ]
    assert isinstance(found.meters[2], AttributedMeter)
    assert found.skipped == ()
    found.close()
    assert nvml.inits == nvml.shutdowns == 3  # one to find the GPUs, one per meter


def test_gpus_from_argument_or_cuda_visible_devices(tmp_path: Path) -> None:
    nvml = FakeNvml([FakeGpu(uuid=f"GPU-{i}") for i in range(3)])
    cfg = settings(tmp_path, rapl=False, ram_w_per_gb=0)
    found = detect_meters(settings=cfg, gpus=["2"], nvml_module=nvml, env={})
    assert devices(found) == [("gpu:2", "counter"), ("cpu", "estimate")]
    env = {"CUDA_VISIBLE_DEVICES": "GPU-1,0"}
    found = detect_meters(settings=cfg, nvml_module=nvml, env=env)
    assert devices(found)[:2] == [("gpu:1", "counter"), ("gpu:0", "counter")]
    found = detect_meters(settings=cfg, nvml_module=nvml, env={"CUDA_VISIBLE_DEVICES": ""})
    assert devices(found) == [("cpu", "estimate")]
    assert found.skipped == ("rapl: off (meters.rapl = false)",)


def test_auto_skips_what_is_missing_and_says_why_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    nvml = FakeNvml(init_error="Driver Not Loaded xyz")
    cfg = settings(tmp_path)
    with caplog.at_level(logging.INFO, logger="ecoq.meters"):
        for _ in range(2):
            found = detect_meters(settings=cfg, nvml_module=nvml, process=os.getpid(), env={})
            assert devices(found) == [("cpu", "estimate"), ("ram", "estimate")]
            assert found.skipped[0].startswith("nvml: NVML could not start: Driver Not Loaded xyz")
            assert found.skipped[1].startswith(f"rapl: {tmp_path / 'powercap'} does not exist")
    said = [r.getMessage() for r in caplog.records if "Driver Not Loaded xyz" in r.getMessage()]
    assert len(said) == 1


def test_asked_for_meters_fail_loudly(tmp_path: Path) -> None:
    cfg = settings(tmp_path)
    with pytest.raises(MeterUnavailable, match="meters.rapl = false"):
        detect_meters(["rapl"], settings=cfg)
    with pytest.raises(MeterUnavailable, match="Driver Not Loaded"):
        detect_meters(
            ["nvml", "estimate"], settings=cfg, nvml_module=FakeNvml(init_error="Driver Not Loaded")
        )
    with pytest.raises(MeterUnavailable, match="no GPUs"):
        detect_meters(["nvml"], settings=cfg, gpus=[], nvml_module=FakeNvml())
    with pytest.raises(ValidationError, match="unknown meter 'joulescope'; meters are nvml, rapl"):
        detect_meters(["joulescope"])


def test_asked_for_meters_only(tmp_path: Path) -> None:
    laptop_tree(tmp_path / "powercap")
    cfg = settings(tmp_path, rapl=False, nvml=False)  # the names win over the switches
    found = detect_meters(["rapl"], settings=cfg, nvml_module=FakeNvml())
    assert devices(found) == [("cpu", "counter")]
    assert not isinstance(found.meters[0], AttributedMeter)  # no process: the whole machine
    found = detect_meters(["estimate"], settings=cfg, process=ProcessTree())
    assert devices(found) == [("cpu", "estimate"), ("ram", "estimate")]


def test_failure_closes_meters_already_opened(tmp_path: Path) -> None:
    nvml = FakeNvml([FakeGpu()])
    with pytest.raises(MeterUnavailable):
        detect_meters(["nvml", "rapl"], settings=settings(tmp_path), nvml_module=nvml)
    assert nvml.inits == nvml.shutdowns == 2


def test_defaults_match_the_config_section() -> None:
    assert dataclasses.asdict(MeterDefaults()) == dataclasses.asdict(MetersSettings())


def test_meters_never_import_the_scheduler_or_the_database() -> None:
    code = (
        "import sys\n"
        "import ecoq.meters, ecoq.meters.nvml, ecoq.meters.rapl, ecoq.meters.estimate\n"
        "import ecoq.meters.process, ecoq.meters.sampler\n"
        "from ecoq.meters import detect_meters\n"
        "from ecoq.meters.sampler import Sampler\n"
        "found = detect_meters(process=1, env={})\n"
        "Sampler(found.meters, thread=False).start().stop()\n"
        "bad = ('ecoq.scheduler', 'ecoq.db', 'ecoq.models', 'ecoq.views', 'sqlmodel',\n"
        "       'sqlalchemy')\n"
        "print(sorted(m for m in sys.modules if m.startswith(bad)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
