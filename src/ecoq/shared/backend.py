"""The shared daemon's operations, each authorised for its caller.

A user sees and changes only the jobs they submitted (`jobs.uid`); an admin (`shared.admins`,
and root) sees and changes every job. A job that exists but is not the caller's is reported
exactly as a job that does not exist, so nobody learns which ids other users hold. Changes go
through `Queue` (cancel, hold, release, start) or the CLI's own submit path; reads through
`ecoq.views`. No operation returns a job's environment.
"""

from __future__ import annotations

import base64
import logging
import os
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from ecoq import __version__
from ecoq.config import job_environment
from ecoq.errors import EcoqError, JobNotFound, ValidationError
from ecoq.shared.access import Caller
from ecoq.shared.protocol import VERSION, Request, SubmitRequest, job_row
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
        with self._reading() as reader:
            self._authorise(caller, args["id"], reader)
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
