"""The one error root of ecoq and its few subclasses.

Every message names the bad value and the fix. Library code raises these; only the CLI prints them
and turns them into exit codes (`UsageError` and its subclasses exit 2, every other `EcoqError`
exits 1).
"""


class EcoqError(Exception):
    """ecoq failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.__doc__)


class UsageError(EcoqError):
    """Bad input from the user: a flag, a file or a value. Nothing was written."""


class ConfigError(UsageError):
    """Invalid configuration (a file, an environment variable or a flag)."""


class ValidationError(UsageError):
    """A job or command argument failed validation."""


class UnknownZone(UsageError):
    """The zone is not known to the forecast source."""


class JobNotFound(UsageError):
    """No job with that id."""


class IllegalTransition(EcoqError):
    """A job cannot move from its current state to the requested one."""


class ForecastUnavailable(EcoqError):
    """No carbon-intensity forecast could be obtained."""


class MeterUnavailable(EcoqError):
    """An energy meter could not be read."""


class DatabaseError(EcoqError):
    """The database could not be opened, migrated or written."""


class ExecutorError(EcoqError):
    """A job's process could not be started, signalled or reconciled."""
