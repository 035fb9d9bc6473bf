"""Sites: the places that run jobs. Pure data (no I/O, no database).

A site is this box's daemon, another box's daemon on the shared database, or a Slurm
cluster/partition. It sits in one grid zone and has a capacity, a PUE and an idle power per GPU
(what a SIGSTOPped job's GPUs still draw; docs/design.md, "Pausing is not free").
"""

from dataclasses import dataclass
from typing import Literal

from ecoq.errors import ValidationError

__all__ = ["SITE_KINDS", "Site", "SiteKind"]

SiteKind = Literal["local", "remote", "slurm"]
SITE_KINDS: tuple[SiteKind, ...] = ("local", "remote", "slurm")


@dataclass(frozen=True)
class Site:
    """One place that runs jobs.

    Attributes:
        name: unique site name (`box1`, `slurm-gpu`).
        zone: the grid zone its electricity comes from (provider zone id, `DE`).
        gpus: GPUs it has; `None` for unlimited. A job's `gpus` count against it over time.
        slots: jobs it may run at once; `None` for unlimited (`ecoq simulate --capacity N`).
        pue: power usage effectiveness (≥ 1): facility energy = IT energy × PUE. The planner
            compares sites by intensity × PUE.
        idle_w_per_gpu: watts each GPU of a stopped (SIGSTOP) job still draws.
        kind: how it is reached: `local` (this box), `remote` (another ecoq daemon on the shared
            database) or `slurm`.

    Raises:
        ValidationError: on construction, for an empty name or zone, a negative capacity, a PUE
            below 1, a negative idle power or an unknown kind.
    """

    name: str
    zone: str
    gpus: int | None = None
    slots: int | None = None
    pue: float = 1.0
    idle_w_per_gpu: float = 0.0
    kind: SiteKind = "local"

    def __post_init__(self) -> None:
        if not self.name or not self.zone:
            raise ValidationError(f"site {self.name!r} needs a name and a zone")
        for label, value in (("gpus", self.gpus), ("slots", self.slots)):
            if value is not None and value < 0:
                raise ValidationError(f"site {self.name!r}: {label} {value} is negative")
        if not self.pue >= 1.0:  # also rejects NaN
            raise ValidationError(f"site {self.name!r}: PUE {self.pue} is below 1; use e.g. 1.2")
        if not self.idle_w_per_gpu >= 0.0:
            raise ValidationError(
                f"site {self.name!r}: idle_w_per_gpu {self.idle_w_per_gpu} is negative"
            )
        if self.kind not in SITE_KINDS:
            raise ValidationError(
                f"site {self.name!r}: kind {self.kind!r} is unknown; use one of {SITE_KINDS}"
            )

    @property
    def limited(self) -> bool:
        """Whether the site has any capacity limit."""
        return self.gpus is not None or self.slots is not None
