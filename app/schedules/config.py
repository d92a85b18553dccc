"""Knobs of schedules, sources and the watcher, read from ``INFERQ_*`` environment variables.

They live here rather than in ``Settings`` because only this package reads them; every process
(API, worker, beat) reads the same environment, so they agree.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from app.settings import VAR_DIR


@dataclass(frozen=True, slots=True)
class ScheduleConfig:
    """How often schedules are looked at, and where their files may be."""

    tick_seconds: float = 5.0
    """``INFERQ_SCHEDULE_TICK_SECONDS``: beat sends the schedules tick this often; a due
    schedule fires at most this late, a new file in a watched directory is seen this late."""
    source_roots: tuple[Path, ...] = ()
    """``INFERQ_SOURCE_ROOTS`` (paths joined by ``os.pathsep``; ``*`` allows any path): with
    API keys off (one trusted tenant) and no ``INFERQ_DATA_ROOTS`` entry, the only folders file
    sources and file sinks may use; with API keys on each tenant has its own
    (``INFERQ_DATA_ROOTS``, see ``access``). Relative paths are taken under the first one.
    Default: ``<INFERQ_VAR_DIR>/data``."""
    settle_seconds: float = 2.0
    """``INFERQ_WATCH_SETTLE_SECONDS``: a watched file is taken in once it has not changed for
    this long (a file still being written is left for a later tick)."""
    runs_per_tick: int = 4
    """``INFERQ_SCHEDULE_RUNS_PER_TICK``: most runs one tick carries out (the next tick goes on)."""
    stale_run_seconds: float = 600.0
    """A run still ``running`` without a job this long after its claim (its worker died) is
    handed to the next tick."""
    max_run_attempts: int = 3
    """Claims of one run before it is marked failed."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ScheduleConfig:
        env = os.environ if env is None else env
        roots_raw = env.get("INFERQ_SOURCE_ROOTS", str(VAR_DIR / "data"))
        roots = tuple(
            Path(p).expanduser().resolve() for p in roots_raw.split(os.pathsep) if p and p != "*"
        )
        return cls(
            tick_seconds=float(env.get("INFERQ_SCHEDULE_TICK_SECONDS", "5")),
            source_roots=() if "*" in roots_raw.split(os.pathsep) else roots,
            settle_seconds=float(env.get("INFERQ_WATCH_SETTLE_SECONDS", "2")),
            runs_per_tick=int(env.get("INFERQ_SCHEDULE_RUNS_PER_TICK", "4")),
        )

    @property
    def any_path(self) -> bool:
        return not self.source_roots
