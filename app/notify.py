"""Wake long-polls when predictions finish or jobs end: Postgres LISTEN/NOTIFY, polling elsewhere.

Workers ``NOTIFY inferq_done, '<id>,<id>,…'`` in the transaction that stores results, and with
a job's id in the one that ends it; one listener connection per API process fans the ids out to
whoever waits on them. A worker's results also carry their final documents (as ``GET`` reads
them; ``app.db.predictions.notify_done``): a caller waiting on one of them is answered from the
NOTIFY (``take_final``), with no read back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

import orjson

from app.db.predictions import FINALS_MARK, NOTIFY_CHANNEL

log = logging.getLogger(__name__)

Callback = Callable[[str], None]


class CompletionHub:
    """Calls the callbacks registered for an id when a NOTIFY names it.

    It also remembers the ids this process submitted (``expect``) until a NOTIFY names them:
    a long-poll on such an id knows it is still unfinished and waits for the NOTIFY before
    its first read, so a submit-then-wait costs one read instead of two. Forgotten when the
    listener loses its connection (a NOTIFY may have been missed) and past ``max_expected``.
    """

    max_expected = 100_000

    def __init__(self, database_url: str) -> None:
        self.url = database_url.replace("postgresql+psycopg://", "postgresql://")
        self.enabled = self.url.startswith("postgresql://")
        self._subs: dict[str, set[Callback]] = {}
        self._expected: OrderedDict[str, str] = OrderedDict()  # id -> tenant
        self._finals: dict[str, tuple[str, float | None, str]] = {}  # id -> tenant, expiry, doc
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.connected = threading.Event()

    def start(self) -> None:
        if self.enabled and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="notify-listener", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=3)

    def subscribe(self, pid: str, callback: Callback) -> None:
        with self._lock:
            self._subs.setdefault(pid, set()).add(callback)

    def unsubscribe(self, pid: str, callback: Callback) -> None:
        with self._lock:
            subs = self._subs.get(pid)
            if subs is not None:
                subs.discard(callback)
                if not subs:
                    del self._subs[pid]
                    self._finals.pop(pid, None)

    def expect(self, ids: Iterable[str], tenant: str) -> None:
        """``ids`` are about to be stored as queued by this process for ``tenant``."""
        if not self.connected.is_set():
            return
        with self._lock:
            for pid in ids:
                self._expected[pid] = tenant
            while len(self._expected) > self.max_expected:
                self._expected.popitem(last=False)

    def forget(self, ids: Iterable[str]) -> None:
        """``ids`` were not stored after all (a replay, or the insert failed)."""
        with self._lock:
            for pid in ids:
                self._expected.pop(pid, None)

    def still_pending(self, pid: str, tenant: str) -> bool:
        """True (once) if ``pid`` was submitted here for ``tenant`` and no NOTIFY named it since."""
        with self._lock:
            owner = self._expected.pop(pid, None)
        return owner == tenant and self.connected.is_set()

    def take_final(self, pid: str, tenant: str, now: float | None = None) -> bytes | None:
        """The final document a NOTIFY brought for ``pid`` (which someone here waits on), if
        it is ``tenant``'s and not expired (a unix time ``now``); None: read it instead."""
        with self._lock:
            final = self._finals.pop(pid, None)
        if final is None or final[0] != tenant:
            return None
        expires = final[1]
        if expires is not None and expires <= (time.time() if now is None else now):
            return None
        return final[2].encode()

    def _forget_expected(self) -> None:
        with self._lock:
            self._expected.clear()

    def _fire(self, payload: str) -> None:
        if payload.startswith(FINALS_MARK):
            self._fire_finals(payload)
            return
        for pid in payload.split(","):
            with self._lock:
                self._expected.pop(pid, None)
                callbacks = list(self._subs.get(pid, ()))
            for cb in callbacks:
                cb(pid)

    def _fire_finals(self, payload: str) -> None:
        for line in payload[len(FINALS_MARK) :].split("\n"):
            head, _, doc = line.partition("\t")  # JSON escapes tabs: the first one ends the head
            try:
                pid, tenant, expires = orjson.loads(head)
            except (orjson.JSONDecodeError, ValueError, TypeError):
                log.warning("malformed NOTIFY line ignored", extra={"line": line[:80]})
                continue
            with self._lock:
                self._expected.pop(pid, None)
                callbacks = list(self._subs.get(pid, ()))
                if callbacks:
                    self._finals[pid] = (tenant, expires, doc)
            for cb in callbacks:
                cb(pid)

    def _run(self) -> None:
        import psycopg

        delay = 0.5
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True, connect_timeout=3) as conn:
                    conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    self.connected.set()
                    delay = 0.5
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=0.5):
                            self._fire(note.payload)
            except Exception as exc:
                self.connected.clear()
                self._forget_expected()
                log.warning("notify listener reconnecting", extra={"error": str(exc)[:200]})
                time.sleep(delay)
                delay = min(delay * 2, 10.0)
