"""Attribution: a job's share of CPU energy, from its process tree's CPU time (psutil).

Rule: over each interval between two reads, a job is charged the package energy times
``job CPU time / machine busy CPU time``, where busy time is user + nice + system + irq + softirq
summed over all CPUs. Base (idle) power is thereby shared among the processes that were busy in
proportion to their CPU time: a job alone on an otherwise idle box carries the box's whole
package energy, two equal jobs half each, and a stopped (paused) job nothing. Energy of
intervals in which nothing was busy is charged to no one.

A process tree is the root process and its descendants, found through
``/proc/PID/task/TID/children`` (psutil's full process scan where that file is missing). Its CPU
time counts each process's own user + system time and the times of the children it has reaped,
once: a process that disappears was either reaped inside the tree (its parent's children time
grows by its total, and what was already counted is credited against that) or orphaned (what was
counted stays). Processes that daemonise out of the tree are not followed. When the root has
exited, the tree's time stays at its last reading; `ProcessTree.set_final_cpu_s` can correct
it from the root's rusage (``os.wait4``).
"""

import functools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil  # type: ignore[import-untyped]  # no stubs in the dev extra

from ecoq.errors import MeterUnavailable
from ecoq.meters import Meter, MeterDescription


@dataclass(frozen=True)
class ProcInfo:
    """One process as read: its parent, own and reaped-children CPU seconds, and RSS bytes."""

    ppid: int
    own_s: float
    children_s: float
    rss_bytes: int


def read_proc(pid: int) -> ProcInfo | None:
    """psutil's view of `pid`, or None when it is gone (a zombie still reads, with final times)."""
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            t = proc.cpu_times()
            return ProcInfo(
                ppid=proc.ppid(),
                own_s=t.user + t.system,
                children_s=t.children_user + t.children_system,
                rss_bytes=proc.memory_info().rss if proc.status() != psutil.STATUS_ZOMBIE else 0,
            )
    except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError):
        return None


@functools.cache
def _proc_children_supported() -> bool:
    """Whether the kernel lists children in /proc (CONFIG_PROC_CHILDREN): one read a process
    instead of psutil's scan of every process."""
    pid = os.getpid()
    return Path(f"/proc/{pid}/task/{pid}/children").exists()


def list_children(pid: int) -> list[int]:
    """Direct children of `pid` ([] when it is gone)."""
    task_dir = Path(f"/proc/{pid}/task")
    if not _proc_children_supported():
        try:
            return [p.pid for p in psutil.Process(pid).children()]
        except psutil.Error:
            return []
    kids: list[int] = []
    try:
        tids = os.listdir(task_dir)
    except OSError:
        return []
    for tid in tids:
        try:
            kids += [int(k) for k in (task_dir / tid / "children").read_text().split()]
        except (OSError, ValueError):
            continue  # the thread just ended
    return kids


class ProcessTree:
    """CPU seconds and memory of a process and its descendants; may be attached after creation.

    Args:
        pid: the root process; None to `attach` one later (reads give 0 until then).
        read: reads one process (tests pass a fake table).
        children: lists a process's direct children.
        max_age_s: reads within this many seconds of the last scan reuse it, so that several
            meters sampled together scan /proc once.
    """

    def __init__(
        self,
        pid: int | None = None,
        *,
        read: Callable[[int], ProcInfo | None] = read_proc,
        children: Callable[[int], list[int]] = list_children,
        clock: Callable[[], float] = time.monotonic,
        max_age_s: float = 0.05,
    ) -> None:
        self.pid = pid
        self._read = read
        self._children = children
        self._clock = clock
        self._max_age_s = max_age_s
        self._scanned_at: float | None = None
        self._seen: dict[int, ProcInfo] = {}
        self._credit_s: dict[int, float] = {}
        self._cpu_s = 0.0
        self._rss_bytes = 0
        self._final_cpu_s = 0.0

    def attach(self, pid: int) -> None:
        """Start following `pid` (for a tree created before its process was started)."""
        self.pid = pid
        self._scanned_at = None

    def cpu_s(self) -> float:
        """CPU seconds (user + system) used by the tree since it was attached; never decreases."""
        self._scan()
        return max(self._cpu_s, self._final_cpu_s)

    def rss_bytes(self) -> int:
        """Resident memory of the tree's live processes, bytes (shared pages count per process)."""
        self._scan()
        return self._rss_bytes

    def set_final_cpu_s(self, cpu_s: float) -> None:
        """Record the root's total CPU seconds from its rusage after it was waited for."""
        self._final_cpu_s = max(self._final_cpu_s, cpu_s)

    def _scan(self) -> None:
        now = self._clock()
        if self.pid is None or (
            self._scanned_at is not None and now - self._scanned_at < self._max_age_s
        ):
            return
        self._scanned_at = now
        current: dict[int, ProcInfo] = {}
        stack = [self.pid]
        while stack:
            pid = stack.pop()
            if pid in current:
                continue
            info = self._read(pid)
            if info is None:
                continue
            current[pid] = info
            stack += self._children(pid)
        self._account(current)

    def _account(self, current: dict[int, ProcInfo]) -> None:
        for pid, gone in self._seen.items():
            if pid not in current and gone.ppid in current:
                # reaped by a parent in the tree: its total reappears in the parent's children
                # time, of which what was already counted must not count again
                counted = gone.own_s + gone.children_s
                self._credit_s[gone.ppid] = self._credit_s.get(gone.ppid, 0.0) + counted
        for pid, info in current.items():
            old = self._seen.get(pid)
            if old is None:  # first seen: all its time is new (readers use differences)
                self._cpu_s += info.own_s + info.children_s
                continue
            self._cpu_s += max(0.0, info.own_s - old.own_s)
            grown = max(0.0, info.children_s - old.children_s)
            credit = self._credit_s.pop(pid, 0.0)
            if credit > grown:
                self._credit_s[pid] = credit - grown
            self._cpu_s += max(0.0, grown - credit)
        self._seen = current
        self._credit_s = {p: c for p, c in self._credit_s.items() if p in current}
        self._rss_bytes = sum(info.rss_bytes for info in current.values())


def machine_busy_cpu_s() -> float:
    """Busy CPU seconds of the whole machine, summed over CPUs (user + nice + system + irq +
    softirq; guest time is already inside user, steal is not this machine's work)."""
    t = psutil.cpu_times()
    return sum(getattr(t, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq"))


class CpuShare:
    """Each interval's ``tree CPU time / machine busy CPU time``, clamped to [0, 1]."""

    def __init__(
        self,
        tree_cpu_s: Callable[[], float],
        busy_cpu_s: Callable[[], float] = machine_busy_cpu_s,
    ) -> None:
        self._tree = tree_cpu_s
        self._busy = busy_cpu_s
        self._last: tuple[float, float] | None = None

    def next(self) -> float:
        """The share since the previous call (0 at the first call)."""
        tree_s, busy_s = self._tree(), self._busy()
        last, self._last = self._last, (tree_s, busy_s)
        if last is None:
            return 0.0
        d_tree, d_busy = tree_s - last[0], busy_s - last[1]
        if d_busy <= 0:
            return 1.0 if d_tree > 0 else 0.0
        return min(1.0, max(0.0, d_tree / d_busy))


class AttributedMeter:
    """A machine-wide CPU meter charged to one process tree by its CPU-time share."""

    def __init__(self, inner: Meter, tree: ProcessTree, *, share: CpuShare | None = None) -> None:
        self.inner = inner
        self.tree = tree
        self._share = share or CpuShare(tree.cpu_s)
        self.max_interval_s = inner.max_interval_s
        d = inner.description
        who = f"process {tree.pid}" if tree.pid is not None else "the metered process"
        detail = f"{d.detail}; share of busy CPU time used by {who} and its children"
        self.description = MeterDescription(d.device, d.method, detail)
        self._total_j = 0.0
        self._last_j: float | None = None

    def energy_j(self) -> float:
        """The tree's joules since the first read.

        Raises:
            MeterUnavailable: the inner meter failed.
        """
        energy_j = self.inner.energy_j()
        try:
            share = self._share.next()
        except psutil.Error as exc:
            raise MeterUnavailable(f"cannot read CPU times: {exc}") from exc
        if self._last_j is not None:
            self._total_j += max(0.0, energy_j - self._last_j) * share
        self._last_j = energy_j
        return self._total_j

    def close(self) -> None:
        self.inner.close()
