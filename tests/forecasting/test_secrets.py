"""Credentials: environment and 0600 file, redaction, and no credential in any log or message."""

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import respx

from ecoq.errors import ConfigError
from ecoq.forecasting import ProviderUnavailable
from ecoq.forecasting.electricitymaps import ElectricityMapsProvider
from ecoq.forecasting.secrets import Credentials, Secret, load_credentials, secrets_file
from ecoq.forecasting.watttime import WattTimeProvider
from tests.forecasting.helpers import (
    EM_BASE,
    EM_TOKEN,
    WT_BASE,
    WT_PASSWORD,
    WT_TOKEN,
    WT_USER,
    FakeTime,
    em_forecast,
    wt_answer,
)

FILE_TEXT = f"""
[watttime]
username = "{WT_USER}"
password = "{WT_PASSWORD}"

[electricitymaps]
token = "{EM_TOKEN}"
"""


def write_secrets(path: Path, text: str = FILE_TEXT, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"HOME": str(tmp_path / "home"), "XDG_CONFIG_HOME": str(tmp_path / "cfg")}


def test_secret_is_redacted() -> None:
    secret = Secret("hunter2")
    assert repr(secret) == "Secret('***')" and str(secret) == "***"
    assert f"{secret}" == "***" and "hunter2" not in repr([secret])
    assert secret.reveal() == "hunter2"
    assert secret == Secret("hunter2") and secret != Secret("other")
    creds = Credentials(watttime_username=Secret("u"), watttime_password=Secret("hunter2"))
    assert "hunter2" not in repr(creds)


def test_from_environment(env: dict[str, str]) -> None:
    env |= {
        "ECOQ_WATTTIME_USERNAME": WT_USER,
        "ECOQ_WATTTIME_PASSWORD": WT_PASSWORD,
        "ECOQ_ELECTRICITYMAPS_TOKEN": f" {EM_TOKEN}\n",
    }
    creds = load_credentials(env)
    assert creds.watttime() == (Secret(WT_USER), Secret(WT_PASSWORD))
    assert creds.electricitymaps().reveal() == EM_TOKEN  # surrounding blanks dropped
    assert creds.sources["watttime.password"] == "env ECOQ_WATTTIME_PASSWORD"
    assert creds.file is None


def test_default_file_under_the_config_dir(env: dict[str, str]) -> None:
    path = write_secrets(Path(env["XDG_CONFIG_HOME"]) / "ecoq" / "secrets.toml")
    assert secrets_file(env) == (path, False)
    creds = load_credentials(env)
    assert creds.watttime() == (Secret(WT_USER), Secret(WT_PASSWORD))
    assert creds.electricitymaps() == Secret(EM_TOKEN)
    assert creds.sources["electricitymaps.token"] == f"file {path}" and creds.file == path


def test_environment_wins_over_the_file(env: dict[str, str], tmp_path: Path) -> None:
    path = write_secrets(tmp_path / "s.toml")
    env |= {"ECOQ_SECRETS_FILE": str(path), "ECOQ_WATTTIME_PASSWORD": "from-env"}
    creds = load_credentials(env)
    assert creds.watttime() == (Secret(WT_USER), Secret("from-env"))


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o606])
def test_group_or_world_accessible_file_is_refused(
    env: dict[str, str], tmp_path: Path, mode: int
) -> None:
    path = write_secrets(tmp_path / "s.toml", mode=mode)
    with pytest.raises(ConfigError) as info:
        load_credentials({**env, "ECOQ_SECRETS_FILE": str(path)})
    message = str(info.value)
    assert f"chmod 600 {path}" in message and f"mode {mode:04o}" in message
    assert WT_PASSWORD not in message


def test_named_file_must_exist(env: dict[str, str], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_credentials({**env, "ECOQ_SECRETS_FILE": str(tmp_path / "nope.toml")})


def test_missing_default_file_is_fine(env: dict[str, str]) -> None:
    creds = load_credentials(env)
    assert creds == Credentials()
    with pytest.raises(ConfigError, match="ECOQ_WATTTIME_USERNAME and ECOQ_WATTTIME_PASSWORD"):
        creds.watttime()
    with pytest.raises(ConfigError, match="ECOQ_ELECTRICITYMAPS_TOKEN"):
        creds.electricitymaps()


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (f'[watttime]\npassword = "{WT_PASSWORD}\n', "not valid TOML"),
        (f'[watttime]\npasswd = "{WT_PASSWORD}"\n', "unknown key 'watttime.passwd'"),
        ("[watttime]\npassword = 12345678\n", "must be a string"),
        (f'token = "{EM_TOKEN}"\n', "'token' is not a table"),
    ],
)
def test_malformed_file_never_echoes_values(
    env: dict[str, str], tmp_path: Path, text: str, fragment: str
) -> None:
    path = write_secrets(tmp_path / "s.toml", text)
    with pytest.raises(ConfigError, match=fragment) as info:
        load_credentials({**env, "ECOQ_SECRETS_FILE": str(path)})
    assert WT_PASSWORD not in str(info.value) and EM_TOKEN not in str(info.value)
    assert "12345678" not in str(info.value)


# -- the end-to-end check: no credential in any log record or exception message ------------------


@pytest.fixture
def router() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False) as mock:
        yield mock


def test_no_credential_in_logs_or_errors(
    router: respx.MockRouter, caplog: pytest.LogCaptureFixture
) -> None:
    now = datetime(2024, 5, 28, 14, 22, tzinfo=UTC)
    fake = FakeTime(now)
    t0 = datetime(2024, 5, 28, 14, 20, tzinfo=UTC)
    pts = [
        {"point_time": (t0 + timedelta(minutes=5 * i)).isoformat(), "value": 900} for i in range(3)
    ]
    warning = {"type": "W", "message": "example"}
    router.get(f"{WT_BASE}/login").mock(
        side_effect=[
            httpx.Response(200, json={"token": "first-token-xyz"}),
            httpx.Response(200, json={"token": WT_TOKEN}),
            httpx.Response(401, json={"error": f"bad login for {WT_USER}"}),
        ]
    )
    router.get(f"{WT_BASE}/v3/forecast").mock(
        side_effect=[
            httpx.Response(401, json={"error": "expired token first-token-xyz"}),
            httpx.Response(503),
            httpx.Response(429, headers={"Retry-After": "1"}),
            httpx.Response(200, json=wt_answer(pts, warnings=[warning])),
            httpx.Response(403, json={"error": f"token {WT_TOKEN} may not read PJM"}),
            httpx.Response(401, json={"error": "expired"}),
        ]
    )
    router.get(f"{EM_BASE}/v3/carbon-intensity/forecast").mock(
        side_effect=[
            httpx.Response(200, json=em_forecast(t0.replace(minute=0), [300, 310])),
            httpx.Response(401, json={"error": f"Invalid auth-token {EM_TOKEN}"}),
        ]
    )
    errors: list[str] = []
    with caplog.at_level(logging.DEBUG):  # root: ecoq, httpx and httpcore records all captured
        watttime = WattTimeProvider(
            Secret(WT_USER), Secret(WT_PASSWORD),
            sleep=fake.sleep, monotonic=fake.monotonic, now=fake.now,
        )  # fmt: skip
        watttime.forecast("CAISO_NORTH", now, now + timedelta(minutes=10))
        for zone in ("PJM_DC", "CAISO_NORTH"):
            with pytest.raises(ProviderUnavailable) as info:
                watttime.forecast(zone, now, now + timedelta(minutes=10))
            errors.append(repr(info.value) + str(info.value))
        em = ElectricityMapsProvider(Secret(EM_TOKEN), sleep=fake.sleep, now=fake.now)
        em.forecast("DE", now, now + timedelta(hours=1))
        with pytest.raises(ProviderUnavailable) as info:
            em.forecast("DE", now, now + timedelta(hours=1))
        errors.append(repr(info.value) + str(info.value))
        errors.append(repr(watttime.__dict__) + repr(em.__dict__))
    logged = "\n".join(
        f"{r.name}: {r.getMessage()} {r.args!r} {r.exc_text or ''}" for r in caplog.records
    )
    assert any(r.name.startswith("httpx") for r in caplog.records)  # httpx's own logger ran
    assert "W: example" in logged and "logging in again" in logged
    assert "token *** may not read PJM" in errors[0]
    for secret in (WT_USER, WT_PASSWORD, WT_TOKEN, "first-token-xyz", EM_TOKEN):
        assert secret not in logged, secret
        for text in errors:
            assert secret not in text, (secret, text)
