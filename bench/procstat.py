"""Where the machine's time and memory go, read from ``/proc`` (Linux; psutil not needed).

``CpuMeter`` gives the CPU seconds each group of processes (API, workers, the benchmark client,
Postgres, Redis) spent during a scenario, next to the whole machine's busy time, which shows how
much of the box other work took. ``RssSampler`` follows resident memory and keeps the peak.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
PROC = Path("/proc")

PidSource = Callable[[], Iterable[int]]


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2 :].split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (all its threads); 0 if it is gone."""
    f = _stat_fields(pid)
    return 0.0 if f is None else (int(f[11]) + int(f[12])) / CLK_TCK


def children(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (prefork pool children and the like)."""
    by_parent: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            f = _stat_fields(int(entry.name))
            if f is not None:
                by_parent.setdefault(int(f[1]), []).append(int(entry.name))
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in by_parent.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def pids_named(*names: str) -> list[int]:
    """Live processes whose ``comm`` is one of ``names`` (e.g. ``postgres``, ``redis-server``)."""
    found = []
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            try:
                comm = (entry / "comm").read_text().strip()
            except OSError:
                continue
            if comm in names:
                found.append(int(entry.name))
    return found


def memory_kib(pid: int, field: str = "VmRSS") -> int:
    """``VmRSS`` (now) or ``VmHWM`` (peak so far) of ``pid`` in KiB; 0 if it is gone."""
    try:
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def machine_busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, summed over cores."""
    fields = [int(x) for x in (PROC / "stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    total = sum(fields[:8])
    return (total - idle) / CLK_TCK, total / CLK_TCK


class CpuMeter:
    """CPU seconds per group of processes between ``start()`` and ``stop()``."""

    def __init__(self, groups: Mapping[str, PidSource]) -> None:
        self.groups = groups
        self._start: dict[str, dict[int, float]] = {}
        self._machine = (0.0, 0.0)

    def _snapshot(self) -> dict[str, dict[int, float]]:
        return {g: {p: cpu_seconds(p) for p in src()} for g, src in self.groups.items()}

    def start(self) -> None:
        self._start = self._snapshot()
        self._machine = machine_busy_seconds()

    def stop(self) -> dict[str, float]:
        """Seconds per group, plus ``machine_busy`` and ``machine_capacity`` (cores x wall)."""
        end = self._snapshot()
        busy, total = machine_busy_seconds()
        out = {
            g: round(sum(max(0.0, s - self._start[g].get(p, 0.0)) for p, s in pids.items()), 3)
            for g, pids in end.items()
        }
        out["machine_busy"] = round(busy - self._machine[0], 3)
        out["machine_capacity"] = round(total - self._machine[1], 3)
        return out


class RssSampler:
    """Samples ``VmRSS`` of some processes every ``interval`` seconds; keeps each one's peak."""

    def __init__(self, pids: dict[str, int], interval: float = 0.1) -> None:
        self.pids = pids
        self.interval = interval
        self.peak_kib = dict.fromkeys(pids, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            for name, pid in self.pids.items():
                self.peak_kib[name] = max(self.peak_kib[name], memory_kib(pid))
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        for name, pid in self.pids.items():
            self.peak_kib[name] = max(self.peak_kib[name], memory_kib(pid))
