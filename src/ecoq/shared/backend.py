"""The shared daemon's operations, each authorised for its caller.

A user sees and changes only the jobs they submitted (`jobs.uid`); an admin (`shared.admins`,
and root) sees and changes every job. A job that exists but is not the caller's is reported
exactly as a job that does not exist, so nobody learns which ids other users hold. Changes go
through `Queue` (cancel, hold, release, start) or the CLI's own submit path; reads through
`ecoq.views`. No operation returns a job's environment.

`report` counts a user's own jobs only (by the kernel-given uid), an admin's everyone's;
`forecast` answers from the daemon's providers, with its credentials, which users never see.
Both run the CLI's own code (injected), so their answers and errors are those of the command.
"""

from __future__ import annotations

import base64
import logging
import os
import stat
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from ecoq import __version__
from ecoq.config import job_environment
from ecoq.errors import EcoqError, JobNotFound, ValidationError
from ecoq.shared.access import Caller
from ecoq.shared.protocol import VERSION, Request, Streamed, SubmitRequest, job_row
from ecoq.views import Reader, get_job, latest_run_dir, list_jobs

if TYPE_CHECKING:
    from ecoq.scheduler.queue import Queue
    from ecoq.views import JobView

__all__ = ["Backend"]

log = logging.getLogger(__name__)

#: What the CLI's submit path does for a checked request on behalf of a user (user, uid).
SubmitFn = Callable[[SubmitRequest, str, int], "JobView"]
#: `ecoq show`'s accounting lines for a job id.
AccountingFn = Callable[[int], list[tuple[str, str]]]
#: `ecoq report`'s text and run count: called with the reader, `uid=` (None: everyone's) and
#: the checked `report` arguments (since, until, by, format, codecarbon).
ReportFn = Callable[..., tuple[str, int]]
#: `ecoq forecast`'s answer (`ForecastAnswer.to_result()`) for the checked `forecast` arguments.
ForecastFn = Callable[..., dict[str, Any]]
#: `ecoq show --plot`'s PNG of a job (reader, job id).
PlotFn = Callable[[Reader, int], bytes]

#: Providers `ecoq forecast --provider` would ask over the network, uncached, with the daemon's
#: credentials and quota: only admins may (users get the daemon's cached chain).
_LIVE_PROVIDERS = frozenset({"watttime", "electricitymaps", "ukgrid"})
#: Reports and plots made at once; more wait (a by-job report of 100,000 runs
#: takes seconds and a few hundred MB).
_HEAVY_AT_ONCE = 2
_HEAVY_WAIT_S = 60.0

_ACTIONS = {"cancel": "cancel", "hold": "hold", "release": "release", "start": "run_now"}


@dataclass
class Backend:
    """The operations behind the socket.

    `reader()` opens a fresh read-only view of the job store (None: no database yet); each
    request uses its own, as the server runs requests on several threads.
    """

    queue: Queue
    reader: Callable[[], Reader | None]
    submit_fn: SubmitFn
    accounting: AccountingFn | None = None
    allow_root_jobs: bool = False
    report: ReportFn | None = None
    forecast: ForecastFn | None = None
    plot: PlotFn | None = None
    heavy: threading.BoundedSemaphore = field(
        default_factory=lambda: threading.BoundedSemaphore(_HEAVY_AT_ONCE)
    )

    def handle(self, caller: Caller, request: Request) -> Any:
        """Carry out a checked request for `caller`; the result is JSON-ready.

        Raises:
            JobNotFound: the job does not exist or is not the caller's (and they are no admin).
            EcoqError: whatever the queue or the submit path raises (bad input, finished job).
        """
        args = request.args
        if request.op == "hello":
            return {
                "uid": caller.uid,
                "user": caller.user,
                "admin": caller.admin,
                "version": __version__,
                "protocol": VERSION,
            }
        if request.op == "queue":
            return self._list(caller, all_jobs=args["all"])
        if request.op == "submit":
            return {"job": job_row(self._submit(caller, request.submit()))}
        if request.op == "report":
            return self._report(caller, args)
        if request.op == "forecast":
            return self._forecast(caller, args)
        with self._reading() as reader:
            self._authorise(caller, args["id"], reader)
            if request.op == "plot":
                assert reader is not None  # _authorise found the job
                with self._heavy_slot():
                    png = self._needs(self.plot, "show --plot")(reader, args["id"])
                return {"png": base64.b64encode(png).decode("ascii")}
            if request.op == "show":
                job = get_job(reader, args["id"]) if reader is not None else None
                if job is None:
                    raise self._not_found(caller, args["id"])
                lines = self.accounting(args["id"]) if self.accounting else []
                return {"job": job_row(job), "accounting": [list(x) for x in lines]}
            if request.op == "logs":
                return self._logs(reader, args["id"], args["offset"], args["max_bytes"])
        outcome = getattr(self.queue, _ACTIONS[request.op])(args["id"])
        log.info("%s: %s job %s: %s", caller.label, request.op, args["id"], outcome)
        return {"outcome": outcome}

    @contextmanager
    def _reading(self) -> Iterator[Reader | None]:
        reader = self.reader()
        try:
            yield reader
        finally:
            close = getattr(reader, "close", None)
            if close is not None:
                close()

    @contextmanager
    def _heavy_slot(self) -> Iterator[None]:
        if not self.heavy.acquire(timeout=_HEAVY_WAIT_S):
            raise EcoqError("the ecoq daemon is busy with other reports; try again in a minute")
        try:
            yield
        finally:
            self.heavy.release()

    @staticmethod
    def _needs(fn: Callable[..., Any] | None, command: str) -> Callable[..., Any]:
        if fn is None:
            raise EcoqError(f"this ecoq daemon does not serve `ecoq {command}`; run it as root")
        return fn

    def _report(self, caller: Caller, args: dict[str, Any]) -> Streamed:
        uid = None if caller.admin else caller.uid  # never from the request
        report = self._needs(self.report, "report")
        with self._heavy_slot(), self._reading() as reader:
            text, runs = report(reader, uid=uid, **args)
        log.info(
            "%s: report (%s, %d runs)", caller.label, "everyone" if uid is None else "own", runs
        )
        return Streamed({"runs": runs}, text)

    def _forecast(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        provider = args["provider"]
        live = provider is not None and provider.strip().lower() in _LIVE_PROVIDERS
        if live and not caller.admin:
            raise ValidationError(
                f"--provider {provider} asks that provider directly, uncached, with the "
                "daemon's credentials; on a shared box only admins may. Drop --provider to "
                "see the forecast the planner uses"
            )
        result: dict[str, Any] = self._needs(self.forecast, "forecast")(**args)
        return result

    @staticmethod
    def _not_found(caller: Caller, job_id: int) -> JobNotFound:
        whose = "" if caller.admin else f" of yours ({caller.label})"
        return JobNotFound(f"no job {job_id}{whose}; `ecoq queue --all` lists your jobs")

    def _authorise(self, caller: Caller, job_id: int, reader: Reader | None) -> None:
        rows = reader.query("SELECT uid FROM jobs WHERE id = :id", {"id": job_id}) if reader else []
        if not rows or not (caller.admin or rows[0]["uid"] == caller.uid):
            raise self._not_found(caller, job_id)

    def _list(self, caller: Caller, *, all_jobs: bool) -> list[dict[str, Any]]:
        with self._reading() as reader:
            if reader is None:
                return []
            jobs = list_jobs(reader, include_finished=all_jobs)
            if not caller.admin:
                mine = reader.query("SELECT id FROM jobs WHERE uid = :uid", {"uid": caller.uid})
                ids = {row["id"] for row in mine}
                jobs = [j for j in jobs if j.id in ids]
        return [job_row(j) for j in jobs]

    def _logs(
        self, reader: Reader | None, job_id: int, offset: int, max_bytes: int
    ) -> dict[str, Any]:
        job = get_job(reader, job_id) if reader is not None else None
        run_dir = latest_run_dir(reader, job_id) if reader is not None else None
        out: dict[str, Any] = {"state": str(job.state) if job else None, "run": run_dir is not None}
        data, size = b"", 0
        if run_dir is not None:
            try:
                fd = os.open(run_dir / "output.log", os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            except FileNotFoundError:
                fd = -1
            except OSError as exc:  # e.g. ELOOP: output.log was made a link, never followed
                raise EcoqError(
                    f"cannot read the output of job {job_id}: {exc.strerror}; its run folder "
                    f"{run_dir} was tampered with, tell the box's admin"
                ) from exc
            if fd >= 0:
                try:
                    info = os.fstat(fd)
                    if stat.S_ISREG(info.st_mode):  # never a FIFO or device the job made
                        size = info.st_size
                        data = os.pread(fd, min(max_bytes, max(0, size - offset)), offset)
                finally:
                    os.close(fd)
        out.update(data=base64.b64encode(data).decode("ascii"), offset=offset + len(data))
        out["size"] = size
        return out

    def _submit(self, caller: Caller, req: SubmitRequest) -> JobView:
        if caller.uid == 0 and not self.allow_root_jobs:
            raise ValidationError(
                "root may not submit jobs on a shared box (they would run as root); submit "
                "as a user, or set shared.allow_root_jobs = true"
            )
        if caller.user.startswith("uid "):
            raise ValidationError(
                f"{caller.label} has no account on this machine, so no job can run as it; "
                "ask the box's admin to create one"
            )
        env = job_environment(req.env)  # no credentials, no database password
        view = self.submit_fn(replace(req, env=env), caller.user, caller.uid)
        log.info("%s: submitted job %s (%s)", caller.label, view.id, view.name)
        return view
