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
