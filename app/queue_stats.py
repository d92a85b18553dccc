"""The autoscaling signal: inputs waiting per model and how long the oldest has waited.

Read from Postgres, the source of truth (the broker's queue length misses what a worker holds
unacknowledged and what the sweeper has yet to publish again), by two grouped queries on the
indexed live rows, computed when Prometheus scrapes the API and reused for
``INFERQ_QUEUE_METRICS_TTL_SECONDS``. Served by the API, not by workers, so a deployment scaled
to zero workers still reports its backlog (docs/observability.md: KEDA, HPA).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from app.db.base import utcnow

log = logging.getLogger(__name__)

PREDICTIONS_SQL = text(
    "SELECT model, status, count(*), min(created_at) FROM predictions"
    " WHERE status IN ('queued', 'running') GROUP BY model, status"
)
JOBS_SQL = text(
    "SELECT model, coalesce(sum(total - succeeded - failed - cancelled), 0), min(created_at)"
    " FROM jobs WHERE status IN ('queued', 'running') GROUP BY model"
)


@dataclass(slots=True)
class ModelQueue:
    """What waits for one model."""

    queued: int = 0
    """Predictions queued plus the lines of unfinished jobs not scored yet."""
    running: int = 0
    """Predictions a worker is running now."""
    oldest: datetime | None = None
    """When the oldest queued prediction or unfinished job was accepted."""


def read(session: Session) -> dict[str, ModelQueue]:
    """Every model's queue as the database has it now."""
    out: dict[str, ModelQueue] = {}
    for model, status, n, oldest in session.execute(PREDICTIONS_SQL):
        q = out.setdefault(model, ModelQueue())
        if status == "running":
            q.running += int(n)
        else:
            q.queued += int(n)
            q.oldest = _min(q.oldest, _aware(oldest))
    for model, lines, oldest in session.execute(JOBS_SQL):
        q = out.setdefault(model, ModelQueue())
        q.queued += int(lines)
        if lines:
            q.oldest = _min(q.oldest, _aware(oldest))
    return out


def _aware(value: datetime | str | None) -> datetime | None:
    if isinstance(value, str):  # SQLite hands back text for an aggregate
        value = datetime.fromisoformat(value)
    if value is not None and value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value


def _min(a: datetime | None, b: datetime | None) -> datetime | None:
    return b if a is None else a if b is None else min(a, b)


class QueueStats(Collector):
    """A Prometheus collector of ``read``, cached ``ttl`` seconds; empty until ``attach``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sessions: sessionmaker[Session] | None = None
        self._ttl = 5.0
        self._at = 0.0
        self._cached: dict[str, ModelQueue] = {}
        self._models: set[str] = set()

    def attach(
        self, sessions: sessionmaker[Session], ttl: float, models: Iterable[str] = ()
    ) -> None:
        """Read from ``sessions``; ``models`` (and every model seen since) are reported with
        0 when nothing waits, so a drained queue reads 0 rather than going missing."""
        with self._lock:
            self._sessions, self._ttl, self._at = sessions, ttl, 0.0
            self._models.update(models)

    def detach(self) -> None:
        with self._lock:
            self._sessions, self._cached = None, {}

    def _current(self) -> dict[str, ModelQueue]:
        with self._lock:
            if self._sessions is None:
                return {}
            if time.monotonic() - self._at >= self._ttl:
                try:
                    with self._sessions() as s:
                        found = read(s)
                    self._models.update(found)
                    self._cached = {m: found.get(m) or ModelQueue() for m in self._models}
                except Exception as exc:  # a scrape must not fail with the database
                    log.warning("queue gauges not read", extra={"error": repr(exc)[:200]})
                self._at = time.monotonic()
            return self._cached

    def collect(self) -> Iterator[GaugeMetricFamily]:
        queues = self._current()
        now = utcnow()
        queued = GaugeMetricFamily(
            "inferq_queued_inputs",
            "Inputs waiting per model (queued predictions and unscored lines of unfinished jobs)",
            labels=["model"],
        )
        running = GaugeMetricFamily(
            "inferq_running_inputs", "Predictions being run per model", labels=["model"]
        )
        age = GaugeMetricFamily(
            "inferq_queue_oldest_age_seconds",
            "Age of the oldest queued input per model (0 when none waits)",
            labels=["model"],
        )
        for model, q in sorted(queues.items()):
            queued.add_metric([model], q.queued)
            running.add_metric([model], q.running)
            oldest = 0.0 if q.oldest is None else max(0.0, (now - q.oldest).total_seconds())
            age.add_metric([model], oldest)
        yield queued
        yield running
        yield age

    def describe(self) -> Iterator[GaugeMetricFamily]:
        """The families without touching the database (registration calls this)."""
        yield GaugeMetricFamily("inferq_queued_inputs", "", labels=["model"])
        yield GaugeMetricFamily("inferq_running_inputs", "", labels=["model"])
        yield GaugeMetricFamily("inferq_queue_oldest_age_seconds", "", labels=["model"])


QUEUES = QueueStats()
REGISTRY.register(QUEUES)
