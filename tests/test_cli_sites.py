"""`ecoq submit` with `[[sites]]`: `--region` groups, relocation in the stored plan, and the
errors for zones no site serves. The real CLI in-process on a real SQLite file, with the bundled
typical profiles as forecast."""

from pathlib import Path

import pytest

from ecoq.db import open_engine
from ecoq.scheduler.queue import Queue
from tests.cli_helpers import cli, cli_json, count_rows, make_script

SITES = """
[site]
name = "box-de"
zone = "DE"

[[sites]]
name = "box-de"
zone = "DE"
gpus = 2

[[sites]]
name = "box-fr"
kind = "remote"
zone = "FR"
gpus = 8

[[sites]]
name = "hpc-se"
kind = "slurm"
zone = "SE-SE1"
"""


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    make_script(tmp_path)
    config = tmp_path / "ecoq.toml"
    config.write_text(SITES)
    monkeypatch.setenv("ECOQ_CONFIG", str(config))
    return tmp_path


def _stored(job_id: int) -> tuple[list[str] | None, str | None]:
    import os

    job = Queue(open_engine(os.environ["ECOQ_DATABASE_URL"])).get(job_id)
    return job.zones, job.site


def test_region_allows_the_zones_of_the_group_that_sites_serve(workdir: Path) -> None:
    job = cli_json("submit", "job.sh", "--deadline", "24h", "--duration", "2h", "--region", "eu")
    zones, site = _stored(job["id"])
    assert zones == ["DE", "FR", "SE-SE1"]  # home zone (site.zone) first; only served zones
    assert job["zone"] == "DE" and site in ("box-de", "box-fr", "hpc-se")
    assert job["site"] == site


def test_a_job_in_one_zone_is_planned_at_that_zones_site(workdir: Path) -> None:
    job = cli_json("submit", "job.sh", "--deadline", "24h", "--duration", "1h", "--zone", "FR")
    assert job["site"] == "box-fr" and _stored(job["id"]) == (None, "box-fr")  # None: [zone]


def test_gpu_requests_are_checked_against_the_largest_site(workdir: Path) -> None:
    # 8 GPUs is more than this box has, but box-fr has them; hpc-se has no limit at all.
    ok = cli_json(
        "submit", "job.sh", "--deadline", "24h", "--duration", "1h", "--zone", "FR", "--gpus", "8"
    )
    assert ok["site"] == "box-fr"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--region", "atlantis"], "--region 'atlantis' is not a zone group; use one of europe"),
        (["--region", "oceania"], "--region 'oceania': no site serves any of its zones"),
        (["--zone", "PL"], "no usable site serves zone(s) PL; sites: box-de (DE), box-fr (FR)"),
    ],
)
def test_zones_no_site_serves_are_refused_and_nothing_is_written(
    workdir: Path, args: list[str], message: str
) -> None:
    result = cli("submit", "job.sh", "--deadline", "24h", "--duration", "1h", *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert count_rows("jobs") == 0


def test_zones_lists_the_groups(workdir: Path) -> None:
    groups = cli_json("zones", "--groups")
    europe = next(g for g in groups if g["group"] == "europe")
    assert europe["aliases"] == ["eu"] and "DE" in europe["zones"]
    text = cli("zones", "--groups").stdout
    assert text.startswith("europe (eu): AT, BE")
