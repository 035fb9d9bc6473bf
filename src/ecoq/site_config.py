"""``[[sites]]``: the places that run jobs, as the config file lists them (stdlib only).

Each ``[[sites]]`` table names one site: this box, another ecoq daemon on the shared database, or
a Slurm cluster (or partition). The planner picks site and time together among the sites in a
job's allowed zones (`ecoq.scheduler.sitemap`). Sites come from the config file only: an array
of tables has no ``ECOQ_<SECTION>__<KEY>`` form.

```toml
[[sites]]
name = "box-de"          # the daemon whose site.name is "box-de" runs these jobs
kind = "local"           # local | remote (another ecoq daemon) | slurm
zone = "DE"
gpus = 8                 # GPUs; omit: detect (this box) or unlimited (other sites)
slots = 16               # jobs at once; omit: no limit beyond the GPUs
pue = 1.3
idle_w_per_gpu = 50      # what each GPU of a SIGSTOPped job still draws

[[sites]]
name = "hpc-fr"
kind = "slurm"
zone = "FR"
gpus = 64
partition = "gpu"        # Slurm keys: cluster, partition, account, gres, sbatch_args,
account = "ml"           #   slurm_conf, timeout_s (see ecoq.scheduler.executors.slurm_site)
```

``local`` and ``remote`` differ only in intent: the daemon whose ``site.name`` equals the site's
name runs it, so one config file can be shared by every box.
"""

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from ecoq.errors import ConfigError

__all__ = ["SITE_KEYS", "SLURM_KEYS", "SiteConfig", "parse_sites"]

SiteKind = Literal["local", "remote", "slurm"]
_KINDS: tuple[SiteKind, ...] = ("local", "remote", "slurm")
#: Keys every site takes.
SITE_KEYS = ("name", "kind", "zone", "gpus", "slots", "pue", "idle_w_per_gpu")
#: The most GPUs or job slots a site may have (more is no real site; the daemon loops over them).
MAX_COUNT = 1_000_000
#: Keys only a Slurm site takes (their meaning: `ecoq.scheduler.executors.slurm_site.SlurmSite`).
SLURM_KEYS = ("cluster", "partition", "account", "gres", "sbatch_args", "slurm_conf", "timeout_s")


@dataclass(frozen=True)
class SiteConfig:
    """One ``[[sites]]`` entry, checked.

    Attributes:
        name: unique site name; for a daemon site, the ``site.name`` of the daemon that runs it.
        kind: ``local``, ``remote`` or ``slurm``.
        zone: the grid zone its electricity comes from, as written (canonicalised by the CLI).
        gpus: GPUs it has; None: detected (this box) or unlimited.
        slots: jobs it may run at once; None: no limit beyond the GPUs.
        pue: facility energy / IT energy (≥ 1); the planner compares sites by intensity × PUE.
        idle_w_per_gpu: watts each GPU of a stopped (SIGSTOP) job still draws.
        slurm: the Slurm keys of a ``slurm`` site (empty otherwise).
        line: the line of its ``[[sites]]`` header in the file (0 if unknown), for messages.
    """

    name: str
    kind: SiteKind
    zone: str
    gpus: int | None = None
    slots: int | None = None
    pue: float = 1.0
    idle_w_per_gpu: float = 50.0
    slurm: Mapping[str, object] = field(default_factory=dict, hash=False)
    line: int = 0


def _header_lines(text: str) -> list[int]:
    return [
        n
        for n, line in enumerate(text.split("\n"), 1)  # TOML's only line end (not \x85...)
        if re.match(r"^\s*\[\[\s*sites\s*\]\]", line)
    ]


def _key_lines(text: str, path: str, header: int) -> dict[str, str]:
    """`key -> "path:line"` for the plain `key = ...` lines of the table whose header is on
    line `header` (up to the next table header)."""
    out: dict[str, str] = {}
    if not header:
        return out
    for number, line in enumerate(text.split("\n")[header:], header + 1):
        if re.match(r"^\s*\[", line):
            break
        if m := re.match(r"^\s*([A-Za-z0-9_-]+)\s*=", line):
            out.setdefault(m.group(1), f"{path}:{number}")
    return out


def parse_sites(raw: object, path: str, text: str, errors: list[str]) -> tuple[SiteConfig, ...]:
    """Check the TOML value of ``sites`` read from the file at `path` (whose `text` gives line
    numbers). Problems are appended to `errors`, each naming the file, line, site and key, with
    the fix; the sites without problems are returned."""
    headers = _header_lines(text)
    if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
        errors.append(
            f"{path}: 'sites' must be an array of tables, one [[sites]] per site. "
            f"Fix: edit {path} (see config/ecoq.example.toml)."
        )
        return ()
    out: list[SiteConfig] = []
    names: set[str] = set()
    for i, table in enumerate(cast(list[dict[str, Any]], raw)):
        line = headers[i] if i < len(headers) else 0
        where = f"{path}:{line}" if line else path
        label = f"[[sites]] #{i + 1}" + (f" {table['name']!r}" if "name" in table else "")
        before = len(errors)
        lines = _key_lines(text, path, line)
        site = _site(table, where, label, line, errors, lines)
        if site is not None and site.name in names:
            errors.append(
                f"{where}: {label}: the name {site.name!r} is used twice; site names must be "
                f"unique. Fix: rename one in {path}."
            )
        elif site is not None and len(errors) == before:
            names.add(site.name)
            out.append(site)
    return tuple(out)


def _site(
    table: Mapping[str, Any],
    where: str,
    label: str,
    line: int,
    errors: list[str],
    lines: Mapping[str, str],
) -> SiteConfig | None:
    def bad(key: str, problem: str) -> None:
        at = where if key not in table else lines.get(key, where)
        shown = f"{key} = {table[key]!r}" if key in table else f"{key} is missing:"
        errors.append(f"{at}: {label}: {shown} {problem}. Fix: edit {at}.")

    kind = table.get("kind", "local")
    if kind not in _KINDS:
        bad("kind", f"is not one of {', '.join(_KINDS)}")
        return None
    allowed = SITE_KEYS + (SLURM_KEYS if kind == "slurm" else ())
    for key in table:
        if key not in allowed:
            at = lines.get(key, where)
            hint = ' (a Slurm key: set kind = "slurm")' if key in SLURM_KEYS else ""
            errors.append(
                f"{at}: {label}: unknown key {key!r}{hint}; valid keys are "
                f"{', '.join(allowed)}. Fix: edit {at}."
            )
    for key in ("name", "zone"):
        value = table.get(key)
        if not isinstance(value, str) or not value.strip():
            bad(key, "must be a non-empty string")
    counts: dict[str, int | None] = {}
    for key in ("gpus", "slots"):
        value = table.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT
        ):
            bad(key, f"must be a whole number >= 0 and at most {MAX_COUNT:,} (omit: no limit)")
            value = None
        counts[key] = value
    numbers: dict[str, float] = {"pue": 1.0, "idle_w_per_gpu": 50.0}
    for key, least in (("pue", 1.0), ("idle_w_per_gpu", 0.0)):
        value = table.get(key, numbers[key])
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            bad(key, "must be a number")
        elif value < least:
            bad(key, f"must be at least {least:g}")
        else:
            numbers[key] = float(value)
    slurm = {k: table[k] for k in SLURM_KEYS if k in table}
    if kind == "slurm":
        _check_slurm(str(table.get("name", "")), slurm, where, errors)
    name, zone = table.get("name"), table.get("zone")
    if not isinstance(name, str) or not isinstance(zone, str):
        return None
    return SiteConfig(
        name=name.strip(),
        kind=cast(SiteKind, kind),
        zone=zone.strip(),
        gpus=counts["gpus"],
        slots=counts["slots"],
        pue=numbers["pue"],
        idle_w_per_gpu=numbers["idle_w_per_gpu"],
        slurm=slurm,
        line=line,
    )


def _check_slurm(name: str, keys: Mapping[str, object], where: str, errors: list[str]) -> None:
    """The Slurm executor's own checks (types, reserved sbatch options), named with the file."""
    from ecoq.scheduler.executors.slurm_site import SlurmSite  # only for Slurm sites

    try:
        SlurmSite.from_table(name or "?", keys)
    except ConfigError as exc:
        errors.append(f"{where}: {exc}. Fix: edit {where}.")
