"""config/ecoq.service: the settings the daemon's stop and restart semantics rely on, and
`systemd-analyze verify` where systemd is installed."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ecoq.logs import LOG_FORMATS

UNIT = Path(__file__).parents[1] / "config" / "ecoq.service"


def _settings() -> dict[str, dict[str, list[str]]]:
    """Section -> key -> values (systemd allows a key more than once)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def _seconds(span: str) -> float:
    units = {"min": 60, "s": 1, "h": 3600, "ms": 0.001, "": 1}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*(min|ms|h|s|)", span):
        total += float(number) * units[unit]
    return total


def test_stop_and_restart_keep_jobs_running() -> None:
    service = _settings()["Service"]
    assert service["KillMode"] == ["process"]  # a daemon restart must not kill the jobs
    assert service["KillSignal"] == ["SIGTERM"]  # the warm stop
    assert _seconds(service["TimeoutStopSec"][0]) >= 5 * 60  # room for the warm stop
    assert service["Restart"] == ["on-failure"]
    assert service["OOMPolicy"] == ["continue"]  # an OOM-killed job must not stop the unit


def test_runs_the_daemon_with_structured_logs_to_the_journal() -> None:
    service = _settings()["Service"]
    argv = service["ExecStart"][0].split()
    assert argv[1:3] == ["daemon", "--log-format"] and argv[3] in LOG_FORMATS
    assert service["StandardError"] == ["journal"] and service["SyslogIdentifier"] == ["ecoq"]
    assert _settings()["Install"]["WantedBy"] == ["multi-user.target"]


def test_hardening_leaves_users_jobs_alone() -> None:
    service = _settings()["Service"]
    # Each of these would break ordinary jobs: JIT compilers, sudo, shared /tmp, home
    # directories, GPU device files, or writing outside a few folders.
    for key in ("MemoryDenyWriteExecute", "NoNewPrivileges", "PrivateTmp", "ProtectHome",
                "PrivateDevices", "ProtectSystem", "DynamicUser", "SystemCallFilter"):  # fmt: skip
        assert key not in service, key
    assert service["TasksMax"] == ["infinity"]


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package `systemd`)")
    # verify checks that ExecStart's program exists: point it at this environment's ecoq.
    ecoq = Path(sys.executable).with_name("ecoq")
    program = str(ecoq) if ecoq.exists() else "/bin/true"
    unit = tmp_path / "ecoq.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/ecoq", program))
    done = subprocess.run(
        [analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr
