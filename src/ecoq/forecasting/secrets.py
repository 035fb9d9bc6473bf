"""Provider credentials, from the environment or a private TOML file; never from ecoq's config.

Each value comes from its environment variable if set (`ECOQ_WATTTIME_USERNAME`,
`ECOQ_WATTTIME_PASSWORD`, `ECOQ_ELECTRICITYMAPS_TOKEN`), else from the secrets file:
`$ECOQ_SECRETS_FILE` (which must exist), else `$XDG_CONFIG_HOME/ecoq/secrets.toml`
(`~/.config/ecoq/secrets.toml`) if it exists. The file must not be readable or writable by group
or others (mode 0600), and looks like:

    [watttime]
    username = "me"
    password = "..."

    [electricitymaps]
    token = "..."

Values are held as `Secret`, whose repr and str are redacted, so they do not end up in logs,
tracebacks or `ecoq config show`.
"""

import hmac
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from ecoq.errors import ConfigError

__all__ = ["ENV_VARS", "Credentials", "Secret", "load_credentials", "secrets_file"]

#: "section.key" in the secrets file -> its environment variable.
ENV_VARS: Mapping[str, str] = {
    "watttime.username": "ECOQ_WATTTIME_USERNAME",
    "watttime.password": "ECOQ_WATTTIME_PASSWORD",
    "electricitymaps.token": "ECOQ_ELECTRICITYMAPS_TOKEN",
}


class Secret:
    """A credential string that never shows itself: `repr` and `str` give `***`."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The actual value, for the one place that sends it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class Credentials:
    """The credentials found; None where none was given. `sources` says where each came from."""

    watttime_username: Secret | None = None
    watttime_password: Secret | None = None
    electricitymaps_token: Secret | None = None
    #: "section.key" -> "env ECOQ_X" | "file <path>"; never the value.
    sources: Mapping[str, str] = field(default_factory=dict, hash=False, compare=False)
    file: Path | None = None  #: the secrets file read, if any

    def watttime(self) -> tuple[Secret, Secret]:
        """Username and password.

        Raises:
            ConfigError: either is missing; the message says how to set them.
        """
        if self.watttime_username is None or self.watttime_password is None:
            raise ConfigError(
                "forecast provider 'watttime' needs a WattTime username and password: set "
                "ECOQ_WATTTIME_USERNAME and ECOQ_WATTTIME_PASSWORD, or [watttime] username and "
                f"password in {self._file_hint()}"
            )
        return self.watttime_username, self.watttime_password

    def electricitymaps(self) -> Secret:
        """The API token.

        Raises:
            ConfigError: it is missing; the message says how to set it.
        """
        if self.electricitymaps_token is None:
            raise ConfigError(
                "forecast provider 'electricitymaps' needs an API token: set "
                f"ECOQ_ELECTRICITYMAPS_TOKEN, or [electricitymaps] token in {self._file_hint()}"
            )
        return self.electricitymaps_token

    def values(self) -> list[str]:
        """Every credential value, for scrubbing messages."""
        found = [getattr(self, f.name) for f in fields(self)]
        return [s.reveal() for s in found if isinstance(s, Secret)]

    def _file_hint(self) -> str:
        where = str(self.file) if self.file else "the secrets file (ECOQ_SECRETS_FILE)"
        return f"{where}, mode 0600"


def _config_home(env: Mapping[str, str]) -> Path:
    value = env.get("XDG_CONFIG_HOME", "")
    if os.path.isabs(value):
        return Path(value)
    return (Path(env["HOME"]) if env.get("HOME") else Path.home()) / ".config"


def secrets_file(env: Mapping[str, str]) -> tuple[Path, bool]:
    """The secrets file and whether it was named explicitly (by `ECOQ_SECRETS_FILE`)."""
    named = env.get("ECOQ_SECRETS_FILE", "")
    if named:
        return Path(os.path.expanduser(named)), True
    return _config_home(env) / "ecoq" / "secrets.toml", False


def _read_private(path: Path) -> str:
    """The text of `path`, checking through the open file that only its owner can access it."""
    try:
        with path.open("rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise ConfigError(
                    f"secrets file {path} is accessible by group or others "
                    f"(mode {stat.S_IMODE(mode):04o}); ecoq will not read it. "
                    f"Fix: chmod 600 {path}"
                )
            return f.read().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"cannot read secrets file {path} ({type(exc).__name__}); make it a readable "
            "UTF-8 TOML file with mode 0600, or unset ECOQ_SECRETS_FILE"
        ) from None


def _file_values(path: Path) -> dict[str, str]:
    import tomllib

    try:
        data = tomllib.loads(_read_private(path))
    except (tomllib.TOMLDecodeError, RecursionError) as exc:  # Recursion: arrays nested deep
        # The decoder's message gives line and column, never the file's content.
        raise ConfigError(f"secrets file {path} is not valid TOML: {exc}") from None
    values: dict[str, str] = {}
    for section, table in data.items():
        if not isinstance(table, dict):
            raise ConfigError(
                f"secrets file {path}: {section!r} is not a table; use [watttime] and "
                "[electricitymaps] sections"
            )
        for key, value in table.items():
            dotted = f"{section}.{key}"
            if dotted not in ENV_VARS:
                valid = ", ".join(ENV_VARS)
                raise ConfigError(f"secrets file {path}: unknown key {dotted!r}; valid: {valid}")
            if not isinstance(value, str):
                raise ConfigError(f"secrets file {path}: {dotted} must be a string")
            values[dotted] = value
    return values


def load_credentials(env: Mapping[str, str] | None = None) -> Credentials:
    """The credentials from `env` (default `os.environ`) and the secrets file.

    Raises:
        ConfigError: `ECOQ_SECRETS_FILE` names a missing file; the file is readable by group or
            others (the message gives the `chmod 600` fix), unreadable, or malformed. Messages
            never contain a credential.
    """
    env = os.environ if env is None else env
    path, named = secrets_file(env)
    from_file: dict[str, str] = {}
    used: Path | None = None
    if named and not path.exists():
        raise ConfigError(f"secrets file {path} (from ECOQ_SECRETS_FILE) does not exist")
    if path.exists():
        from_file, used = _file_values(path), path
    found: dict[str, Secret] = {}
    sources: dict[str, str] = {}
    for dotted, var in ENV_VARS.items():
        raw, source = env.get(var, "").strip(), f"env {var}"
        if not raw:
            raw, source = from_file.get(dotted, "").strip(), f"file {path}"
        if raw:
            found[dotted.replace(".", "_")] = Secret(raw)
            sources[dotted] = source
    return Credentials(
        watttime_username=found.get("watttime_username"),
        watttime_password=found.get("watttime_password"),
        electricitymaps_token=found.get("electricitymaps_token"),
        sources=sources,
        file=used,
    )
