"""CPU time per job, from the kernel's accounting in ``/proc``.

A measurement samples every process involved before and after its run and
adds up what each used in between: ``utime + stime`` of ``/proc/<pid>/stat``
(all of a process's threads), in clock ticks of ``os.sysconf('SC_CLK_TCK')``
(100 a second on Linux, so 10 ms of resolution per process and sample).
Which processes are involved is the caller's to say (``Bench.cpu_sample``): the
process groups the benchmark started (a prefork worker's pool children share
its group), the PostgreSQL backends of the database measured, and the Redis
server. Reading another user's ``/proc/<pid>/stat`` needs no privilege unless
``/proc`` is mounted with ``hidepid``; the benchmark runs as root anyway. The
servers must run on this machine: a remote backend's pid means nothing here.

A process is known by its pid and its start time, so a pid reused in between
is not taken for the one sampled before. A process that starts during the run
counts with all it used; one that ends during it is missed (its time goes to
its parent's ``cutime``, which for a PostgreSQL backend is the postmaster,
shared with every other database): the measurements keep their processes and
connections open across the run, so this leaves out little.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PROC = Path("/proc")

#: (pid, start time in ticks since boot) -> utime + stime in ticks.
Sample = dict[tuple[int, int], int]


@dataclass(frozen=True)
class ProcessStat:
    pid: int
    #: The command name (``comm``), e.g. "postgres", "redis-server".
    name: str
    ppid: int
    pgid: int
    #: When it started, in clock ticks since boot.
    start: int
    #: utime + stime, in clock ticks.
    ticks: int


def read_stat(pid: int) -> ProcessStat | None:
    """``/proc/<pid>/stat``, or None if the process is gone."""
    try:
        data = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces or ")":
    # the fields that matter come after the last ")". fields[0] is field 3.
    fields = data[data.rindex(")") + 2 :].split()
    return ProcessStat(
        pid=pid,
        name=data[data.index("(") + 1 : data.rindex(")")],
        ppid=int(fields[1]),
        pgid=int(fields[2]),
        start=int(fields[19]),
        ticks=int(fields[11]) + int(fields[12]),
    )


def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir(PROC) if name.isdigit()]


def group_members(pgids: Iterable[int]) -> list[int]:
    """Every live process in the given process groups."""
    wanted = set(pgids)
    if not wanted:
        return []
    members = []
    for pid in _all_pids():
        stat = read_stat(pid)
        if stat is not None and stat.pgid in wanted:
            members.append(pid)
    return members


def named(pids: Iterable[int], name: str) -> tuple[list[int], list[int]]:
    """``pids`` split into those of live processes called ``name`` here and those
    of live processes called otherwise (a server's pid from another pid
    namespace, e.g. a container's); the pids of processes gone are dropped."""
    matching: list[int] = []
    others: list[int] = []
    for pid in pids:
        stat = read_stat(pid)
        if stat is not None:
            (matching if stat.name == name else others).append(pid)
    return matching, others


def sample(pids: Iterable[int]) -> Sample:
    """CPU ticks used so far by each of ``pids`` that is alive."""
    taken: Sample = {}
    for pid in set(pids):
        stat = read_stat(pid)
        if stat is not None:
            taken[(stat.pid, stat.start)] = stat.ticks
    return taken


def used_seconds(before: Sample, after: Sample) -> float:
    """CPU seconds used between two samples by the processes alive at the second."""
    ticks = sum(used - before.get(key, 0) for key, used in after.items())
    return ticks / CLOCK_TICKS
