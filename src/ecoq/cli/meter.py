"""`ecoq meter -- CMD ARGS...`: run a command now, without scheduling, and report its energy.

The report goes to stderr (as `time` does), so the command's own output stays clean; with
``--json`` it is one line of JSON on stdout after the command's output (``| tail -n 1``). Exit
code: the command's own (128+N when signal N killed it; 126 or 127 when it could not be started),
or 125 when ecoq itself failed, bad usage of `ecoq meter` included.
"""

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperCommand

from ecoq.cli.app import (
    STATE,
    JsonOpt,
    app,
    canonical_zone,
    examples,
    fail,
    forecast_source,
    settings,
    shared_client,
    utcnow,
)
from ecoq.errors import EcoqError

if TYPE_CHECKING:
    import subprocess
    from datetime import datetime

    from ecoq.meters.sampler import EnergySeries

ECOQ_FAILED = 125  #: exit code when ecoq itself failed, as `env`, `nice` and `timeout` use it

METER_EPILOG = examples(
    "ecoq meter -- python train.py --epochs 1",
    "ecoq meter --zone DE --interval 1 -- ./bench.sh",
    "ecoq meter --json -- make -j8 | tail -n 1",
    note="Energy is measured per device and labelled counter, power-integration or estimate. "
    "GPUs: those in CUDA_VISIBLE_DEVICES (all when unset), through NVML. CPU: RAPL, charged "
    "by the command's share of the busy CPU time, else an estimate. Emissions use the zone's "
    "intensity now (--zone, else site.zone). The report goes to stderr; --json prints it as "
    "one line on stdout after the command's output. Exit code: the command's own, or 125 when "
    "ecoq failed.",
)


class _MeterCommand(TyperCommand):
    """Bad usage of `ecoq meter` exits 125, not click's 2: 2 could be the command's own code."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except Exception as exc:  # click's UsageError (typer may vendor click): exit_code 2
            if getattr(exc, "exit_code", None) == 2:
                exc.exit_code = ECOQ_FAILED  # type: ignore[attr-defined]
            raise


@contextlib.contextmanager
def _ecoq_failures() -> Iterator[None]:
    try:
        yield
    except EcoqError as exc:
        if STATE.verbose:
            import traceback

            traceback.print_exc()
        fail(str(exc), ECOQ_FAILED)
    except (OSError, ValueError, RuntimeError) as exc:
        import traceback

        traceback.print_exc()
        fail(f"ecoq meter failed: {exc}", ECOQ_FAILED)


@app.command(
    cls=_MeterCommand,
    epilog=METER_EPILOG,
    context_settings={"allow_interspersed_args": False},
)
def meter(
    command: Annotated[
        list[str] | None,
        typer.Argument(metavar="-- CMD ARGS", help="The command to run, without a shell."),
    ] = None,
    interval: Annotated[
        float | None,
        typer.Option("--interval", help="Seconds between samples (default meters.interval_s)."),
    ] = None,
    zone: Annotated[
        str | None, typer.Option(help="Grid zone for emissions (default site.zone).")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Run a command now and print the energy it used, by device and method."""
    import math
    import subprocess
    import time

    from ecoq.errors import ValidationError
    from ecoq.meters import detect_meters
    from ecoq.meters.process import ProcessTree
    from ecoq.meters.sampler import Sampler

    with _ecoq_failures():
        cfg = settings()
        argv = list(command or [])
        if not argv:
            raise ValidationError("no command given; usage: ecoq meter [OPTIONS] -- CMD [ARGS]...")
        interval_s = cfg.meters.interval_s if interval is None else interval
        if not (math.isfinite(interval_s) and interval_s > 0):
            raise ValidationError(f"--interval {interval_s:g} must be a number of seconds > 0")
        zone_name = _check_zone(zone or cfg.site.zone)
        tree = ProcessTree()  # attached once the command has a pid
        found = detect_meters(settings=cfg.meters, process=tree)
        sampler = Sampler(found.meters, interval_s=interval_s).start()
    started = time.monotonic()
    try:
        proc = subprocess.Popen(argv)
    except OSError as exc:
        sampler.stop()
        code = 127 if isinstance(exc, FileNotFoundError) else 126
        fail(f"cannot run {argv[0]!r}: {exc.strerror or exc}", code)
    tree.attach(proc.pid)
    code, cpu_s = _wait(proc)
    tree.set_final_cpu_s(cpu_s)
    duration_s = time.monotonic() - started
    with _ecoq_failures():
        series = sampler.stop()
        report = _report(argv, code, duration_s, series, zone_name, sampler.interval_s)
        report["notes"] = list(found.skipped) + report["notes"]
        if json_out:
            import json

            typer.echo(json.dumps(report, ensure_ascii=False))
        else:
            typer.echo(_text(report), err=True)
    raise typer.Exit(code)


def _check_zone(zone: str) -> str:
    """The zone, resolved now for the bundled profiles so a typo fails before the command runs.

    Raises:
        UnknownZone: the bundled profiles do not know it.
    """
    return canonical_zone(zone) if zone else zone


def _wait(proc: "subprocess.Popen[bytes]") -> tuple[int, float]:
    """Wait for the command, forwarding SIGTERM and SIGHUP to it (the terminal already sends
    it Ctrl-C). Returns its exit code (128+N for signal N) and CPU seconds from its rusage."""
    import signal

    def forward(signum: int, _frame: Any) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signum)

    saved: dict[int, Any] = {}
    with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
        saved = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGHUP)}
        saved[signal.SIGINT] = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
    proc.returncode = os.waitstatus_to_exitcode(status)
    code = proc.returncode if proc.returncode >= 0 else 128 - proc.returncode
    return code, usage.ru_utime + usage.ru_stime


def _intensity(zone: str, now: "datetime") -> tuple[dict[str, Any], str | None]:
    """The zone's intensity now as report fields, or a note on why there is none."""
    from datetime import timedelta

    if not zone:
        return {}, "no zone (--zone or site.zone), so no emissions"
    try:
        client = shared_client()
        if client is not None:  # a shared box: the daemon's providers and cache
            return _shared_intensity(
                client.forecast(
                    zone=zone, hours=1, duration=None, deadline=None, provider=None
                ).data,
                now,
            ), None
        fc = forecast_source().forecast(zone, now, now + timedelta(hours=1))
        if fc is None:
            return {}, f"no forecast for zone {zone} from any source, so no emissions"
        value = fc.value_at(now)
    except EcoqError as exc:
        return {}, f"no intensity for zone {zone}: {exc}"
    return {"g_per_kwh": value, "signal": fc.signal, "intensity_source": fc.label}, None


def _shared_intensity(data: dict[str, Any], now: "datetime") -> dict[str, Any]:
    """The report fields from the `--json` object of the daemon's `ecoq forecast`: the value
    of the point holding `now` (the first point when all start later).

    Raises:
        ForecastUnavailable: the answer holds no points.
    """
    from datetime import datetime

    from ecoq.errors import ForecastUnavailable

    points = data.get("points") or []
    if not points:
        raise ForecastUnavailable(f"the daemon's forecast for {data.get('zone')} has no points")
    held = [p for p in points if datetime.fromisoformat(p["time"]) <= now] or points[:1]
    return {
        "g_per_kwh": float(held[-1]["g_per_kwh"]),
        "signal": data.get("signal"),
        "intensity_source": data.get("label"),
    }


def _report(
    argv: list[str],
    code: int,
    duration_s: float,
    series: "EnergySeries",
    zone: str,
    interval_s: float,
) -> dict[str, Any]:
    from ecoq.views import iso

    now = utcnow()
    energy_j = series.energy_j
    fields, note = _intensity(zone, now)
    g_per_kwh = fields.get("g_per_kwh")
    devices = [
        {
            "device": r.device,
            "method": r.method,
            "energy_j": r.energy_j,
            "detail": r.description.detail,
        }
        for r in series.readings()
    ]
    return {
        "command": argv,
        "exit_code": code,
        "started_at": iso(series.started_at),
        "finished_at": iso(series.ended_at),
        "duration_s": duration_s,
        "interval_s": interval_s,
        "energy_j": energy_j,
        "devices": devices,
        "zone": zone or None,
        "g_per_kwh": g_per_kwh,
        "signal": fields.get("signal"),
        "intensity_source": fields.get("intensity_source"),
        "emissions_g": None if g_per_kwh is None else energy_j / 3.6e6 * g_per_kwh,
        "errors": dict(series.errors),
        "notes": [note] if note else [],
    }


def _energy(energy_j: float) -> str:
    return (
        f"{energy_j:.1f} J" if energy_j < 3600 else f"{energy_j:.0f} J ({energy_j / 3600:.2f} Wh)"
    )


def _text(report: dict[str, Any]) -> str:
    import shlex

    shown = shlex.join(report["command"])
    lines = [
        f"ecoq meter: `{shown}` exited with {report['exit_code']} "
        f"after {report['duration_s']:.1f} s (sampled every {report['interval_s']:g} s)"
    ]
    for d in report["devices"]:
        lines.append(
            f"  {d['device']:<7} {_energy(d['energy_j']):>22}  {d['method']:<17} {d['detail']}"
        )
    lines.append(f"  {'total':<7} {_energy(report['energy_j']):>22}")
    if report["emissions_g"] is not None:
        lines.append(
            f"emissions: {report['emissions_g']:.3g} gCO2eq at {report['g_per_kwh']:.0f} g/kWh "
            f"now in {report['zone']} ({report['intensity_source']}, {report['signal']} signal; "
            "IT energy, without PUE)"
        )
    for device, error in report["errors"].items():
        lines.append(f"error: {device} stopped being readable, its energy is partial: {error}")
    lines += [f"note: {n}" for n in report["notes"]]
    return "\n".join(lines)
