"""Sites: the places that run jobs. Pure data (no I/O, no database).

A site is this box's daemon, another box's daemon on the shared database, or a Slurm
cluster/partition. It sits in one grid zone and has a capacity, a PUE and an idle power per GPU
(what a SIGSTOPped job's GPUs still draw; docs/design.md, "Pausing is not free").
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from ecoq.errors import ValidationError

__all__ = ["SITE_KINDS", "Site", "SiteKind", "SiteMap"]

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


@dataclass(frozen=True)
class SiteMap:
    """Every site a plan may use (`[[sites]]`), seen from one daemon.

    Attributes:
        me: this daemon's site name (`site.name`); it runs the jobs planned at the site of that
            name. It need not be a site (a daemon that only drives Slurm sites).
        sites: every configured site.
        down: daemon sites (`local`/`remote`) whose daemon has no live heartbeat: nothing new is
            planned there, so no job waits for a box that is gone.
    """

    me: str
    sites: tuple[Site, ...]
    down: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        names = [s.name for s in self.sites]
        if len(set(names)) != len(names):
            raise ValidationError(f"site names must be unique; got {names}")

    @classmethod
    def seen_from(cls, me: str, sites: Sequence[Site], live: set[str]) -> "SiteMap":
        """The sites as `me` sees them: daemon sites whose name is not in `live` (the daemons
        with a fresh heartbeat) are down."""
        down = {s.name for s in sites if s.kind != "slurm" and s.name not in live}
        return cls(me, tuple(sites), frozenset(down))

    @property
    def limited(self) -> bool:
        """Whether any site has a capacity limit."""
        return any(s.limited for s in self.sites)

    def get(self, name: str | None) -> Site | None:
        """The site called `name`, if configured."""
        return next((s for s in self.sites if s.name == name), None)

    def usable(self) -> list[Site]:
        """The sites new work may be planned at (not `down`)."""
        return [s for s in self.sites if s.name not in self.down]

    def in_zones(self, zones: Sequence[str]) -> list[Site]:
        """The usable sites in `zones`, in the zones' order (home zone first); within a zone
        this daemon's site first, then by name."""
        order = {zone: i for i, zone in reversed(list(enumerate(zones)))}
        found = [s for s in self.usable() if s.zone in order]
        return sorted(found, key=lambda s: (order[s.zone], s.name != self.me, s.name))
