"""Planning beside the tick: the thread that runs the daemon's re-plans, so that a re-plan of
thousands of jobs never holds up starting, reaping, pausing or cancelling jobs.

The tick asks for a plan (`PlannerThread.request`); the thread runs one plan at a time and
coalesces what was asked meanwhile into one more: a request for every waiting job outranks one
for new jobs only. A plan is written in one transaction whose rows are compare-and-sets on each
job's state and last change (`Queue.set_plans` with `seen`), so what the tick and users did to a
job while the plan was being made always wins. A plan that raises is logged, never retried here:
the daemon asks again at its next tick.
"""

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["PlannerThread", "PlanRun"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlanRun:
    """One plan the thread ran: what was asked, how many jobs got a plan, how long it took."""

    all_waiting: bool
    planned: int
    duration_s: float
    failed: bool = False


class PlannerThread:
    """Runs `plan(all_waiting) -> jobs planned` on its own thread, one call at a time.

    `on_done(run)` is called on the thread after each plan (the daemon's service uses it to
    tick at once, so a job planned to start now starts without waiting for the next tick).
    Exceptions from `plan` are logged and reported as a failed `PlanRun`; exceptions from
    `on_done` are logged.
    """

    def __init__(
        self,
        plan: Callable[[bool], int],
        *,
        on_done: Callable[[PlanRun], None] | None = None,
    ) -> None:
        self._plan = plan
        self.on_done = on_done
        self._cond = threading.Condition()
        self._wanted: bool | None = None  # None: nothing asked; True: every waiting job
        self._running = False
        # Each started thread serves while this is its own number: a thread left running by a
        # `stop` that timed out ends after its plan, even if `start` made a new one meanwhile.
        self._generation = 0
        self._thread: threading.Thread | None = None
        #: The last plan run (None: none yet).
        self.last: PlanRun | None = None

    def start(self) -> None:
        """Start the thread (idempotent)."""
        with self._cond:
            if self._thread is not None:
                return
            self._generation += 1
            self._thread = threading.Thread(
                target=self._loop, args=(self._generation,), name="ecoq-planner", daemon=True
            )
            self._thread.start()

    def request(self, *, all_waiting: bool) -> None:
        """Ask for a plan: of new jobs only, or (`all_waiting`) of every waiting job. A request
        made while a plan runs is served by one more plan after it."""
        with self._cond:
            self._wanted = bool(self._wanted) or all_waiting
            self._cond.notify_all()

    @property
    def busy(self) -> bool:
        """A plan is running or asked for."""
        with self._cond:
            return self._running or self._wanted is not None

    def wait_idle(self, timeout_s: float | None = None) -> bool:
        """Block until no plan runs or is asked for; False if `timeout_s` passed first."""
        with self._cond:
            return self._cond.wait_for(
                lambda: not self._running and self._wanted is None, timeout=timeout_s
            )

    def stop(self, timeout_s: float | None = None) -> bool:
        """Serve nothing more; wait up to `timeout_s` for a plan in progress (its transaction
        commits whole or not at all, so abandoning it is safe). False if it still runs."""
        with self._cond:
            self._generation += 1
            self._wanted = None
            self._cond.notify_all()
            thread, self._thread = self._thread, None
        if thread is None:
            return True
        thread.join(timeout_s)
        return not thread.is_alive()

    def _loop(self, generation: int) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(
                    lambda: self._generation != generation or self._wanted is not None
                )
                if self._generation != generation:
                    return
                all_waiting, self._wanted = bool(self._wanted), None
                self._running = True
            began = time.monotonic()
            try:
                planned, failed = self._plan(all_waiting), False
            except Exception:
                log.exception("planning failed; the next tick asks again")
                planned, failed = 0, True
            run = PlanRun(all_waiting, planned, time.monotonic() - began, failed)
            self.last = run
            if self.on_done is not None:
                try:
                    self.on_done(run)
                except Exception:
                    log.exception("after planning")
            with self._cond:
                self._running = False
                self._cond.notify_all()
