"""Attribution: CPU-time shares, process trees (fake tables and real processes)."""

import os
import subprocess
import sys
import time

from ecoq.meters.process import (
    AttributedMeter,
    CpuShare,
    ProcessTree,
    ProcInfo,
    list_children,
    machine_busy_cpu_s,
    read_proc,
)
from tests.meters.fakes import ListMeter


def sequence(*values: float):  # type: ignore[no-untyped-def]
    it = iter(values)
    return lambda: next(it)


def test_share_of_busy_cpu_time_per_interval() -> None:
    share = CpuShare(
        sequence(10.0, 11.0, 11.0, 13.0, 13.5), sequence(100.0, 102.0, 104.0, 106.0, 106.0)
    )
    assert share.next() == 0.0  # the first call only sets the origin
    assert share.next() == 0.5  # 1 s of the 2 busy seconds
    assert share.next() == 0.0  # the job was stopped: nothing charged
    assert share.next() == 1.0  # 2 of 2
    assert share.next() == 1.0  # busy time not yet updated but the job ran: all of it


def test_share_is_clamped() -> None:
    share = CpuShare(sequence(0.0, 3.0, 2.0), sequence(0.0, 2.0, 4.0))
    share.next()
    assert share.next() == 1.0
    assert share.next() == 0.0


def test_attributed_meter_charges_each_interval_by_its_share() -> None:
    inner = ListMeter([1000.0, 1100.0, 1300.0, 1700.0])
    tree = ProcessTree(42, read=lambda pid: None)
    share = CpuShare(sequence(0.0, 1.0, 1.5, 1.5), sequence(0.0, 2.0, 2.5, 4.5))
    meter = AttributedMeter(inner, tree, share=share)
    assert meter.description.device == "cpu"
    assert meter.description.method == "counter"
    assert "share of busy CPU time used by process 42 and its children" in meter.description.detail
    assert meter.energy_j() == 0.0
    assert meter.energy_j() == 50.0  # 100 J × 1/2
    assert meter.energy_j() == 250.0  # + 200 J × 0.5/0.5
    assert meter.energy_j() == 250.0  # + 400 J × 0
    meter.close()
    assert inner.closed == 1


class Table:
    """A fake process table: pid -> (ppid, own s, reaped children s)."""

    def __init__(self) -> None:
        self.procs: dict[int, tuple[int, float, float]] = {}

    def read(self, pid: int) -> ProcInfo | None:
        if pid not in self.procs:
            return None
        ppid, own, kids = self.procs[pid]
        return ProcInfo(ppid, own, kids, rss_bytes=1000 * pid)

    def children(self, pid: int) -> list[int]:
        return [p for p, (ppid, _, _) in self.procs.items() if ppid == pid]


def test_tree_counts_each_cpu_second_once() -> None:
    table = Table()
    tree = ProcessTree(1, read=table.read, children=table.children, max_age_s=0)
    table.procs = {1: (0, 1.0, 0.0), 2: (1, 0.5, 0.0), 9: (0, 50.0, 0.0)}  # 9: not ours
    assert tree.cpu_s() == 1.5
    assert tree.rss_bytes() == 3000
    table.procs.update({1: (0, 1.5, 0.0), 2: (1, 1.0, 0.0)})
    assert tree.cpu_s() == 2.5
    # 2 exits after 0.25 s more and is reaped by 1: its 1.25 s move to 1's children time
    table.procs = {1: (0, 2.0, 1.25)}
    assert tree.cpu_s() == 3.25
    # a child never seen (started and reaped between two reads) still counts, once
    table.procs = {1: (0, 2.0, 1.75)}
    assert tree.cpu_s() == 3.75
    # a grandchild orphaned out of the tree keeps what was counted
    table.procs = {1: (0, 2.0, 1.75), 3: (1, 0.0, 0.0)}
    tree.cpu_s()
    table.procs = {1: (0, 2.0, 1.75), 3: (1, 1.0, 0.0)}
    assert tree.cpu_s() == 4.75
    table.procs = {1: (0, 2.0, 1.75), 3: (99, 1.5, 0.0)}  # re-parented elsewhere
    assert tree.cpu_s() == 4.75
    # the root is gone: the last value stays; the root's rusage can correct it
    table.procs = {}
    assert tree.cpu_s() == 4.75
    assert tree.rss_bytes() == 0
    tree.set_final_cpu_s(5.0)
    assert tree.cpu_s() == 5.0


def test_unattached_tree_reads_zero_until_attached() -> None:
    table = Table()
    table.procs = {7: (1, 2.0, 0.0)}
    tree = ProcessTree(read=table.read, children=table.children, max_age_s=0)
    assert tree.cpu_s() == 0.0
    tree.attach(7)
    assert tree.pid == 7
    assert tree.cpu_s() == 2.0


def test_reads_within_max_age_reuse_the_scan() -> None:
    table = Table()
    table.procs = {1: (0, 1.0, 0.0)}
    clock = [0.0]
    tree = ProcessTree(1, read=table.read, children=table.children, clock=lambda: clock[0])
    assert tree.cpu_s() == 1.0
    table.procs = {1: (0, 2.0, 0.0)}
    assert tree.cpu_s() == 1.0
    clock[0] = 1.0
    assert tree.cpu_s() == 2.0


BUSY_CHILD = (
    "import os, subprocess, sys, time\n"
    "kid = subprocess.Popen([sys.executable, '-c', 'import time\\nt=time.process_time()\\n"
    "while time.process_time() - t < 0.3: pass'])\n"
    "t = time.process_time()\n"
    "while time.process_time() - t < 0.3: pass\n"
    "kid.wait()\n"
    "sys.stdin.read()\n"
)


def test_real_process_tree() -> None:
    proc = subprocess.Popen([sys.executable, "-c", BUSY_CHILD], stdin=subprocess.PIPE)
    try:
        tree = ProcessTree(proc.pid, max_age_s=0)
        deadline = time.monotonic() + 60
        while tree.cpu_s() < 0.6 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert tree.cpu_s() >= 0.6  # its own 0.3 s and its reaped child's 0.3 s
        assert tree.rss_bytes() > 0
    finally:
        proc.communicate(b"")
    last = tree.cpu_s()
    assert tree.cpu_s() == last  # the root is gone: the value stays


def test_list_children_and_read_proc() -> None:
    proc = subprocess.Popen(["sleep", "30"])
    try:
        assert proc.pid in list_children(os.getpid())
        info = read_proc(proc.pid)
        assert info is not None and info.ppid == os.getpid()
    finally:
        proc.kill()
        proc.wait()
    assert read_proc(proc.pid) is None
    assert list_children(proc.pid) == []


def test_machine_busy_time_grows() -> None:
    first = machine_busy_cpu_s()
    t = time.process_time()
    while time.process_time() - t < 0.05:
        pass
    assert machine_busy_cpu_s() > first


def test_a_pid_that_is_no_process_reads_zero() -> None:
    tree = ProcessTree(2**22 + 12345, max_age_s=0)  # above Linux's largest pid
    assert tree.cpu_s() == 0.0
    assert tree.rss_bytes() == 0
