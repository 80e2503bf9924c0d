"""CPU time of process trees, from /proc/<pid>/stat.

A :class:`CpuMeter` follows the processes under some roots (found again at
every sample, so that processes started mid-run count), remembers the last
utime+stime seen of each (so a process that exits mid-run keeps what it used,
up to one sampling interval), and reports the CPU-seconds used since
:meth:`CpuMeter.mark`.  Only utime+stime of each live process are added:
children are followed as processes of their own, so a parent's cutime/cstime
would count them twice.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(slots=True, frozen=True)
class Stat:
    pid: int
    ppid: int
    start: int  # start time in clock ticks since boot: (pid, start) names a process even after pid reuse
    cpu_ticks: int  # utime + stime


def read_stat(pid: int) -> Stat | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:  # gone
        return None
    # the command name may hold spaces and parentheses: the fields start after the last ')'
    fields = data[data.rindex(b")") + 2:].split()
    # fields[0] is field 3 (state): ppid is field 4, utime 14, stime 15, starttime 22
    return Stat(pid, int(fields[1]), int(fields[19]), int(fields[11]) + int(fields[12]))


def all_stats() -> dict[int, Stat]:
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = read_stat(int(name))
            if st is not None:
                out[st.pid] = st
    return out


def tree(stats: dict[int, Stat], roots: list[int], include_roots: bool) -> list[Stat]:
    """The processes under ``roots`` (and the roots themselves if ``include_roots``)."""
    children: dict[int, list[int]] = {}
    for st in stats.values():
        children.setdefault(st.ppid, []).append(st.pid)
    found = []
    stack = [r for r in roots if r in stats]
    seen = set()
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        if include_roots or pid not in roots:
            found.append(stats[pid])
        stack.extend(children.get(pid, ()))
    return found


class CpuMeter:
    __slots__ = ("roots", "include_roots", "last", "base")

    def __init__(self, roots: list[int], include_roots: bool = True):
        self.roots = list(roots)
        self.include_roots = include_roots
        self.last: dict[tuple[int, int], int] = {}  # (pid, start) -> ticks last seen
        self.base: dict[tuple[int, int], int] = {}

    def add_root(self, pid: int) -> None:
        self.roots.append(pid)

    def sample(self, stats: dict[int, Stat] | None = None) -> float:
        """Look at the processes now; CPU-seconds since :meth:`mark`."""
        for st in tree(all_stats() if stats is None else stats, self.roots, self.include_roots):
            self.last[(st.pid, st.start)] = st.cpu_ticks
        return self.used()

    def mark(self) -> None:
        """Start counting from here."""
        self.sample()
        self.base = dict(self.last)

    def used(self) -> float:
        return sum(t - self.base.get(k, 0) for k, t in self.last.items()) / CLK_TCK

    @property
    def processes(self) -> int:
        return len(self.last)
