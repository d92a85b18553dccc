"""Recovery from a broker restart in seconds: the broker-epoch marker on kombu, the thread
that checks it in each worker process, and a consumer that reconnects without Celery's
growing waits.

``app.requeue.BrokerWatch`` says why a marker: this module only speaks to the broker. The
marker is one persistent message on the durable queue ``<prefix>.broker-epoch``, which no
worker consumes (workers take only the queues ``-Q`` names).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import uuid
from datetime import datetime
from typing import Any

import kombu as _kombu
from celery import Celery
from celery import bootsteps as _bootsteps
from celery.worker.consumer import Consumer
from sqlalchemy.orm import Session, sessionmaker

from app.db import sweeps
from app.db.base import utcnow
from app.db.engine import session_scope
from app.requeue import BrokerWatch
from app.settings import Settings
from workers.context import ready_messages

log = logging.getLogger(__name__)

kombu: Any = _kombu  # kombu and Celery's bootsteps ship no type hints
bootsteps: Any = _bootsteps


def epoch_queue_name(settings: Settings) -> str:
    return f"{settings.queue_prefix}.broker-epoch"


class KombuEpoch:
    """``app.requeue.BrokerEpoch`` on one kombu connection of its own (reused; opened again
    after an error)."""

    def __init__(self, celery: Celery, settings: Settings) -> None:
        self.celery = celery
        name = epoch_queue_name(settings)
        self.queue = kombu.Queue(
            name, kombu.Exchange(name, type="direct", durable=True), routing_key=name, durable=True
        )
        self._conn: Any = None

    def _connection(self) -> Any:
        if self._conn is None:
            conn = self.celery.connection_for_write()
            try:
                conn.ensure_connection(max_retries=1, timeout=2)
            except Exception:
                conn.release()
                raise
            self._conn = conn
        return self._conn

    def _reset(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.release()
            self._conn = None

    def epoch_present(self) -> bool | None:
        try:
            conn = self._connection()
            ready = ready_messages(conn.default_channel, self.queue.name)
        except Exception:
            self._reset()  # the broker does not answer: reconnect at the next check
            return None
        if not ready:
            self._reset()  # an AMQP 404 (no such queue: never had it, or lost it) closed it
        return ready > 0

    def put_epoch(self) -> None:
        try:
            conn = self._connection()
            with conn.Producer() as producer:
                producer.publish(
                    {"inferq": "broker epoch", "id": uuid.uuid4().hex, "at": utcnow().isoformat()},
                    exchange=self.queue.exchange,
                    routing_key=self.queue.routing_key,
                    declare=[self.queue],
                    delivery_mode=2,
                    serializer="json",
                    retry=False,
                )
        except Exception:
            self._reset()
            raise

    def close(self) -> None:
        self._reset()


class WatchThread(threading.Thread):
    """Checks the marker every ``interval`` seconds, and at once when ``wake`` is called (the
    consumer reconnected)."""

    def __init__(self, watch: BrokerWatch, interval: float) -> None:
        super().__init__(name="broker-watch", daemon=True)
        self.watch = watch
        self.interval = interval
        self._wake = threading.Event()
        self._halt = threading.Event()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._halt.set()
        self._wake.set()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                self.watch.check(utcnow)
            except Exception as exc:  # Postgres away: the recovery is tried at the next check
                log.warning("broker watch failed", extra={"error": repr(exc)[:300]})
            self._wake.wait(self.interval)
            self._wake.clear()


_lock = threading.Lock()
_thread: WatchThread | None = None


def start(
    celery: Celery, settings: Settings, sessions: sessionmaker[Session], recover: Any
) -> WatchThread | None:
    """Start this process's watch (once); None when it is off or the broker is the embedded
    filesystem one (which loses nothing it was given)."""
    global _thread
    if settings.broker_watch_seconds <= 0 or settings.broker_url.startswith("filesystem://"):
        return None
    prefix = settings.queue_prefix

    def known() -> bool:
        with sessions() as s:
            return sweeps.epoch_known(session=s, prefix=prefix)

    def remember() -> None:
        with session_scope(sessions) as s:
            sweeps.mark_epoch(session=s, prefix=prefix, now=utcnow())

    with _lock:
        if _thread is None:
            marker = KombuEpoch(celery, settings)
            watch = BrokerWatch(marker, recover, known=known, remember=remember)
            _thread = WatchThread(watch, settings.broker_watch_seconds)
            _thread.start()
        return _thread


def wake() -> None:
    if _thread is not None:
        _thread.wake()


def stop() -> None:
    global _thread
    with _lock:
        if _thread is not None:
            _thread.stop()
            _thread.join(5)
            marker = _thread.watch.marker
            if isinstance(marker, KombuEpoch):
                marker.close()
            _thread = None


class WakeOnConnect(bootsteps.StartStopStep):  # type: ignore[misc]
    """A consumer step: Celery starts it on every (re)connection, so a reconnect is checked at
    once instead of at the next tick."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def start(self, c: Any) -> None:
        wake()


def _guard_kombu_redis_closed_channel() -> None:
    """kombu's Redis transport, asked to act on a channel whose connection was closed (a task
    that finished after a reconnect acknowledging its message on the old channel), fails with
    ``AttributeError: 'NoneType' object has no attribute 'hostname'`` instead of a connection
    error; Celery lets that out of its event loop as an unrecoverable error and the worker shuts
    down (tests/e2e/test_broker_restart.py: about one Redis restart in five under load). Made a
    ``redis.ConnectionError`` here, it is what it is: the message cannot be acknowledged on a
    closed connection (it is redelivered, or was lost with the broker, and the claim makes
    either harmless), and the worker goes on."""
    try:
        from kombu.transport import redis as _transport
    except ImportError:  # pragma: no cover - redis is a dependency of celery[redis]
        return
    transport: Any = _transport
    original = transport.Channel._connparams
    if getattr(original, "_inferq_guarded", False) or transport.redis is None:
        return

    def _connparams(self: Any, asynchronous: bool = False) -> Any:
        if self.connection is None or self.connection.client is None:
            raise transport.redis.exceptions.ConnectionError(
                "this channel's broker connection was closed"
            )
        return original(self, asynchronous)

    _connparams._inferq_guarded = True  # type: ignore[attr-defined]
    transport.Channel._connparams = _connparams


_guard_kombu_redis_closed_channel()


class FastReconnectConsumer(Consumer):  # type: ignore[misc]
    """Celery's consumer, reconnecting every ``RETRY_MAX_S`` at most instead of its default
    2, 4, 6 … 30 s (a broker back after 5 s would otherwise wait until the retry at 6 s, one
    back after 15 s until 20 s)."""

    RETRY_START_S = 0.2
    RETRY_MAX_S = 1.0

    def ensure_connected(self, conn: Any) -> Any:
        ensure = conn.ensure_connection

        def fast(*args: Any, **kwargs: Any) -> Any:
            kwargs.setdefault("interval_start", self.RETRY_START_S)
            kwargs.setdefault("interval_step", self.RETRY_START_S)
            kwargs.setdefault("interval_max", self.RETRY_MAX_S)
            return ensure(*args, **kwargs)

        conn.ensure_connection = fast
        return super().ensure_connected(conn)

    def on_connection_error_after_connected(self, exc: Exception) -> None:
        """Celery's, but a close of the lost connection that fails in the transport is not
        fatal. kombu's Redis transport was seen to find its connection half gone already while
        closing it (``'NoneType' object has no attribute 'hostname'``, from a task thread's
        acknowledgement racing the close), and Celery took that for an unrecoverable error: the
        worker shut down instead of reconnecting (tests/e2e/test_broker_restart.py, about one
        Redis restart in five under load). The connection is dropped either way."""
        try:
            super().on_connection_error_after_connected(exc)
        except (AttributeError, TypeError, ValueError) as close_error:
            log.warning(
                "closing the lost broker connection failed; reconnecting anyway",
                extra={"error": repr(close_error)[:200]},
            )
            self.connection = None


def republish_lost(lost_before: datetime, passes: list[Any]) -> int:
    """Run each recovery pass (predictions, job chunks) until one takes nothing more."""
    total = 0
    for step in passes:
        for _ in range(100):  # each pass takes up to a few thousand rows
            n = int(step(lost_before))
            total += n
            if n == 0:
                break
    return total
