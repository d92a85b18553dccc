"""Whether the sweeper publishes stale work again: only what may be lost, never a backlog twice.

A request is published once when it is accepted. The sweeper publishes it again when its
message may have been lost (a broker that restarted without persistence, a purged queue, a
worker killed while it held the message), judged per model, once per sweep, from what the
broker says (``depth``: ready messages on the model's queue, not those workers hold) and what
Postgres says (the publish time of the newest request a live worker holds: the queue's
delivery front):

- never published (its publish failed): always;
- its worker was lost (running under a lease that ran out) and it was not published since:
  always, once;
- queued and last published more than ``requeue_after_seconds`` ago:
  - when the broker cannot tell the depth: yes (at most once per ``requeue_after_seconds``);
  - when the queue holds no ready message: yes. Its message has left the queue: a worker holds
    it (the copy finds the row taken and costs one claim) or it is lost;
  - when the queue holds messages: only if a live worker is running a request of the model
    that was published more than ``requeue_after_seconds`` after it. Queues are first in,
    first out, so its message left the queue long before: it is lost (or sits in a dead
    worker's unacknowledged messages). Otherwise the backlog is still being worked (or waits
    for a worker) and a copy would only make it longer.

So a lost request is published again as soon as its queue drains or the work published after
it starts running, whichever comes first; and a backlog is never copied: while its queue holds
messages only rows behind the delivery front are, each at most once per interval (rows a
worker prefetched but has not started yet can be among them; their copies are few and cheap).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol, runtime_checkable

log = logging.getLogger(__name__)


@runtime_checkable
class QueueDepth(Protocol):
    """A publisher that can say how many messages wait on a model's queue."""

    def depth(self, model: str) -> int | None:
        """Ready messages on ``model``'s queue; None when the broker cannot say."""
        ...


@dataclass(slots=True)
class QueueView:
    """One model's queue as the sweeper sees it during one sweep."""

    depth: int | None
    front: datetime | None = None
    """The publish time of the newest request of the model a live worker holds."""

    @classmethod
    def read(cls, publisher: object, model: str, front: Callable[[], datetime | None]) -> QueueView:
        """The view of ``model``'s queue (``front`` is asked only when the queue holds
        messages)."""
        depth = None
        if isinstance(publisher, QueueDepth):
            try:
                depth = publisher.depth(model)
            except Exception as exc:
                log.warning("queue depth unknown", extra={"model": model, "error": repr(exc)})
        return cls(depth, front() if depth else None)

    def may_be_lost(self, published_at: datetime | None, requeue_after: timedelta) -> bool:
        """Whether a message published at ``published_at`` may be lost (see the module)."""
        if published_at is None or not self.depth:
            return True
        return self.front is not None and published_at < self.front - requeue_after


@runtime_checkable
class BrokerEpoch(Protocol):
    """A marker kept in the broker the way its messages are kept (a persistent message on a
    durable queue nobody consumes): it is gone exactly when the broker lost its messages."""

    def epoch_present(self) -> bool | None:
        """Whether the marker is there; None when the broker does not answer."""
        ...

    def put_epoch(self) -> None:
        """Leave the marker (again)."""
        ...


class BrokerWatch:
    """Finds out, within one check, that the broker lost its messages, and has what it lost
    published again at once instead of after ``requeue_after_seconds``.

    Why a marker and not the reconnect itself: a reconnect says the connection broke, not what
    the broker kept. A Redis that keeps nothing on disk restarts empty (every message gone,
    those workers held unacknowledged included), a RabbitMQ node keeps its durable queues and
    persistent messages, a network blip loses nothing. The marker is kept exactly like the
    messages, so its absence means what was published before is gone, and its presence that
    publishing it again would only copy a backlog.

    ``recover(lost_before)`` publishes again what was published before ``lost_before`` and is
    not held by a live worker (the sweeper's ``lost_before``); its conditional marks make
    several watchers (one per worker process) publish each row once. The marker is put back
    before the recovery runs, so the others see it at their next check; a recovery that fails
    (Postgres away) is tried again at the next check. Postgres remembers that a broker (a queue
    prefix) was given its marker (``known``, ``remember``): a broker without one that never had
    one is new, not one that lost its messages, and nothing is published again.
    """

    def __init__(
        self,
        marker: BrokerEpoch,
        recover: Callable[[datetime], int],
        *,
        known: Callable[[], bool],
        remember: Callable[[], None],
    ) -> None:
        self.marker = marker
        self.recover = recover
        self.known = known
        self.remember = remember
        self.pending: datetime | None = None
        self.losses = 0

    def check(self, now: Callable[[], datetime]) -> int | None:
        """One look at the marker; returns how many were published again (None: the broker
        did not answer)."""
        present = self.marker.epoch_present()
        if present is None:
            return None
        if not present:
            if self.known():  # it had the marker: it lost it, and every message with it
                self.losses += 1
                if self.pending is None:
                    self.pending = now()
                log.warning(
                    "the broker lost its messages: publishing again what it held",
                    extra={"lost_before": self.pending.isoformat()},
                )
            else:
                log.info("a new broker: its epoch marker is put")
            self.marker.put_epoch()
            self.remember()
        if self.pending is None:
            return 0
        count = self.recover(self.pending)
        log.info(
            "republished after a broker loss",
            extra={"count": count, "lost_before": self.pending.isoformat()},
        )
        self.pending = None
        return count
