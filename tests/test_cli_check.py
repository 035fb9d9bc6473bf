"""`ecoq config check`: each check's OK, FAIL and SKIP, the fixes, the exit status and --json."""

import json
import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from ecoq.cli.check import (
    Check,
    check_database,
    check_meters,
    check_providers,
    check_slurm,
    run_checks,
    slurm_sites,
)
from ecoq.config import Settings, load_settings
from ecoq.db import open_engine
from ecoq.forecasting import ForecastProvider, make_provider
from ecoq.forecasting.secrets import Credentials, Secret
from ecoq.migrations import HEAD
from ecoq.scheduler.executors.slurm import SlurmSite
from tests.cli_helpers import cli
from tests.meters.fakes import write_zone
from tests.scheduler.executors.slurm_fakes import SLURM_CONF, FakeRunner

NOW = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)


def _by_name(rows: list[Check]) -> dict[str, Check]:
    return {r.name: r for r in rows}


def _settings(**env: str) -> Settings:
    return load_settings(env={**os.environ, **env})


# -- the command ------------------------------------------------------------------------------
def test_defaults_pass_and_nothing_is_written(tmp_path: Path) -> None:
    result = cli("config", "check")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["CHECK", "STATUS", "DETAIL"]
    assert any(line.split()[:3] == ["provider", "bundled", "OK"] for line in lines)
    assert any(line.split()[:2] == ["slurm", "SKIP"] for line in lines)
    assert lines[-1] == "all checks passed"
    assert not (tmp_path / "ecoq.db").exists()  # a new database is not created by a check


def test_invalid_configuration_fails_with_json_and_skips_the_rest() -> None:
    result = cli("config", "check", "--json", env={"ECOQ_PLANNER__MIN_SAVING": "5"})
    assert result.exit_code == 1
    rows = json.loads(result.stdout)
    assert rows[0]["name"] == "config" and rows[0]["status"] == "FAIL"
    assert "planner.min_saving" in rows[0]["detail"] and rows[0]["fix"]
    assert {r["status"] for r in rows[1:]} == {"SKIP"}


def test_a_failure_prints_its_fix_and_exits_1(tmp_path: Path) -> None:
    env = {"ECOQ_FORECAST__PROVIDER": "electricitymaps", "ECOQ_SITE__ZONE": "DE"}
    result = cli("config", "check", env=env)
    assert result.exit_code == 1
    row = next(line for line in result.stdout.splitlines() if line.startswith("provider"))
    assert row.split()[:3] == ["provider", "electricitymaps", "FAIL"]
    assert "ECOQ_ELECTRICITYMAPS_TOKEN" in row  # the missing credential is named
    assert "fix provider electricitymaps: set what the message names" in result.stdout
    assert result.stdout.splitlines()[-1] == "1 failed"


# -- database -----------------------------------------------------------------------------------
def test_database_at_head_older_and_newer(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'q.db'}"
    open_engine(url).dispose()
    rows = _by_name(check_database(url))
    assert rows["database"].status == "OK"
    assert rows["migrations"].detail.startswith(f"at revision {HEAD}")
    with sqlite3.connect(tmp_path / "q.db") as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0001'")
    assert "upgraded to" in _by_name(check_database(url))["migrations"].detail
    with sqlite3.connect(tmp_path / "q.db") as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999'")
    newer = _by_name(check_database(url))["migrations"]
    assert newer.status == "FAIL" and "newer" in newer.detail and "upgrade ecoq" in newer.fix


def test_unreachable_postgresql_fails_fast_with_the_password_hidden() -> None:
    url = "postgresql+psycopg://ecoq:s3cr3t@127.0.0.1:1/ecoq"
    rows = _by_name(check_database(url))
    assert rows["database"].status == "FAIL" and rows["migrations"].status == "SKIP"
    assert "ecoq:***@127.0.0.1:1" in rows["database"].detail
    assert "s3cr3t" not in rows["database"].detail
    assert "ECOQ_DATABASE_URL" in rows["database"].fix


def test_a_data_folder_that_cannot_be_created_fails(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")  # even root cannot make a folder inside a file
    row = _by_name(check_database(f"sqlite:///{tmp_path / 'a-file' / 'x' / 'q.db'}"))["database"]
    assert row.status == "FAIL" and "writable" in row.fix


# -- providers ----------------------------------------------------------------------------------
@dataclass
class Api:
    """An Electricity Maps stand-in that answers /latest with `status`; counts requests."""

    status: int = 200
    calls: list[httpx.Request] = field(default_factory=list)

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.calls.append(request)
        if self.status != 200:
            return httpx.Response(self.status, json={"message": "nope"})
        hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)  # the provider's now
        stamp = hour.strftime("%Y-%m-%dT%H:%M:%S.000Z")
        point = {"zone": "DE", "carbonIntensity": 322, "datetime": stamp}
        point |= {"updatedAt": stamp, "isEstimated": False}
        return httpx.Response(200, json=point | {"emissionFactorType": "lifecycle"})

    def make(self) -> Callable[[str], ForecastProvider]:
        def build(name: str) -> ForecastProvider:
            creds = Credentials(electricitymaps_token=Secret("em-token"))
            transport = httpx.MockTransport(self.handler)
            return make_provider(name, credentials=creds, transport=transport)

        return build


@pytest.mark.parametrize(
    ("status", "verdict", "fix"),
    [(200, "OK", ""), (401, "FAIL", "credentials"), (503, "FAIL", "network")],
)
def test_provider_one_call_no_retries(status: int, verdict: str, fix: str) -> None:
    api = Api(status)
    cfg = _settings(ECOQ_FORECAST__PROVIDER="electricitymaps", ECOQ_SITE__ZONE="DE")
    (row,) = check_providers(cfg, api.make(), now=NOW)
    assert (row.name, row.status) == ("provider electricitymaps", verdict)
    assert len(api.calls) == 1  # a 503 is not retried: the check stays within one timeout
    assert api.calls[0].url.path == "/v3/carbon-intensity/latest"
    assert fix in row.fix
    if verdict == "OK":
        assert row.detail.startswith("zone DE: 322 g/kWh")
    assert "em-token" not in row.detail


def test_unknown_zone_is_a_provider_failure() -> None:
    cfg = _settings(ECOQ_SITE__ZONE="XX-NOWHERE")
    (row,) = check_providers(cfg, lambda name: make_provider(name), now=NOW)
    assert row.status == "FAIL" and "site.zone" in row.fix


# -- meters -------------------------------------------------------------------------------------
def test_meters_absent_readable_and_broken(tmp_path: Path) -> None:
    absent = _by_name(check_meters(_settings(ECOQ_METERS__POWERCAP_ROOT=str(tmp_path / "none"))))
    assert absent["meter rapl"].status == "SKIP" and absent["meter estimate"].status == "OK"
    root = tmp_path / "powercap"
    write_zone(root, "intel-rapl:0", "package-0", 1_000)
    ok = _by_name(check_meters(_settings(ECOQ_METERS__POWERCAP_ROOT=str(root))))
    assert ok["meter rapl"].status == "OK" and "package-0" in ok["meter rapl"].detail
    (root / "intel-rapl:0" / "name").write_text("psys\n")  # a tree without a package zone
    broken = _by_name(check_meters(_settings(ECOQ_METERS__POWERCAP_ROOT=str(root))))
    assert (
        broken["meter rapl"].status == "FAIL" and "meters.rapl = false" in broken["meter rapl"].fix
    )
    off = _by_name(check_meters(_settings(ECOQ_METERS__RAPL="false", ECOQ_METERS__NVML="false")))
    assert off["meter rapl"].status == off["meter nvml"].status == "SKIP"


def test_configured_gpus_without_nvml_fail() -> None:
    if Path("/proc/driver/nvidia").exists():
        pytest.skip("this machine has an NVIDIA driver")
    row = _by_name(check_meters(_settings(ECOQ_SITE__GPUS="2")))["meter nvml"]
    assert row.status == "FAIL" and "meters.nvml = false" in row.fix


# -- Slurm --------------------------------------------------------------------------------------
SINFO = "debug|up|1|idle\ngpu|down|4|down\n"
CONFIG = "Configuration data as of 2026-11-30T10:00:00\nClusterName             = hpc\n"


def _runner(sinfo: str = SINFO, config: str = CONFIG, rc: int = 0, err: str = "") -> FakeRunner:
    runner = FakeRunner()
    runner.on("sinfo", out=sinfo, rc=rc, err=err)
    runner.on("scontrol", "show", "config", out=config)
    return runner


def test_slurm_sites_ok_and_failures() -> None:
    sites = [
        SlurmSite("a", cluster="hpc", partition="debug"),
        SlurmSite("b", cluster="other"),
        SlurmSite("c", partition="gpu-h100"),
        SlurmSite("d", partition="gpu"),
    ]
    rows = _by_name(check_slurm(sites, _runner()))
    assert (
        rows["slurm a"].status == "OK" and "cluster hpc, partition debug" in rows["slurm a"].detail
    )
    assert rows["slurm b"].status == "FAIL" and "'hpc', not 'other'" in rows["slurm b"].detail
    assert rows["slurm c"].status == "FAIL" and "debug, gpu" in rows["slurm c"].detail
    assert rows["slurm d"].status == "FAIL" and "down" in rows["slurm d"].detail


def test_slurm_unreachable_names_the_command_and_its_error() -> None:
    runner = _runner(rc=1, err="sinfo: error: Unable to contact slurm controller (connect failure)")
    (row,) = check_slurm([SlurmSite("a")], runner)
    assert row.status == "FAIL" and "sinfo" in row.detail and "Unable to contact" in row.detail
    assert "slurmctld" in row.fix


def test_slurm_sites_come_from_the_settings_sites() -> None:
    @dataclass
    class SiteEntry:
        name: str
        kind: str
        zone: str
        partition: str | None = None

    @dataclass
    class WithSites:
        sites: list[object]

    cfg = WithSites(
        [
            SiteEntry("box1", "local", "DE"),
            SiteEntry("hpc", "slurm", "FR", partition="gpu"),
            {"name": "hpc2", "kind": "slurm", "zone": "DE", "sbatch_args": ["--qos=low"]},
        ]
    )
    assert slurm_sites(cfg) == [
        SlurmSite("hpc", partition="gpu"),
        SlurmSite("hpc2", sbatch_args=("--qos=low",)),
    ]
    assert slurm_sites(Settings()) == []


def test_run_checks_includes_the_slurm_rows() -> None:
    rows = run_checks(
        Settings,
        lambda name: make_provider(name),
        runner=_runner(),
        sites=lambda cfg: [SlurmSite("hpc", cluster="hpc")],
    )
    assert rows[-1] == Check("slurm hpc", "OK", "cluster hpc: 2 partition(s) answer")


@pytest.mark.slurm
def test_real_slurm_site_answers() -> None:
    if not SLURM_CONF:
        from tests.conftest import skip_or_fail

        skip_or_fail("no Slurm: set ECOQ_TEST_SLURM_CONF (.ci/run starts one)")
    site = SlurmSite("test", cluster="ecoqtest", partition="debug", slurm_conf=SLURM_CONF)
    (row,) = check_slurm([site])
    assert row.status == "OK", row
    assert row.detail.startswith("cluster ecoqtest, partition debug")
    wrong = SlurmSite("test", cluster="production", slurm_conf=SLURM_CONF)
    assert check_slurm([wrong])[0].status == "FAIL"


def test_the_check_is_quick_to_fail_over(tmp_path: Path) -> None:
    """No provider or database check waits longer than its own timeout (sanity bound)."""
    start = datetime.now(UTC)
    api = Api(503)
    check_providers(_settings(ECOQ_FORECAST__PROVIDER="electricitymaps"), api.make(), now=NOW)
    assert datetime.now(UTC) - start < timedelta(seconds=5)


def test_slurm_sites_from_the_config_file_keep_their_slurm_keys(tmp_path: Path) -> None:
    from ecoq.config import load_settings

    path = tmp_path / "ecoq.toml"
    path.write_text(
        '[[sites]]\nname = "hpc"\nkind = "slurm"\nzone = "FR"\npartition = "gpu"\n'
        'slurm_conf = "/etc/slurm-b/slurm.conf"\n'
        '[[sites]]\nname = "box"\nzone = "DE"\n'
    )
    cfg = load_settings(config_file=path, env={"HOME": str(tmp_path)})
    assert slurm_sites(cfg) == [
        SlurmSite("hpc", partition="gpu", slurm_conf="/etc/slurm-b/slurm.conf")
    ]
