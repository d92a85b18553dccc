"""Signed webhooks out: an outbox table, a dispatcher thread pool, retries with backoff.

The delivery row is written in the same transaction as the result it reports, so a webhook is
never lost; the dispatcher sends it right after commit on its own threads (a slow or dead
receiver never holds up a batch), records every attempt, and retries with exponential backoff.
Rows whose process died are picked up again by the sweeper once their lease runs out.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import httpx
import orjson
from sqlalchemy import insert, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from app.db import predictions as crud
from app.db.base import new_id, utcnow
from app.db.engine import session_scope
from app.db.models import Prediction, WebhookAttempt, WebhookDelivery
from app.predictions.views import prediction_public
from app.settings import Settings

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Inferq-Signature"
DELIVERY_HEADER = "X-Inferq-Delivery"

# subject_type -> loader of the body for a subject id (jobs register theirs).
BodyLoader = Callable[[Session, str], dict[str, object] | None]
BODY_LOADERS: dict[str, BodyLoader] = {}


def _prediction_body(session: Session, subject_id: str) -> dict[str, object] | None:
    p = session.get(Prediction, subject_id)
    return None if p is None else prediction_public(p)


BODY_LOADERS["prediction"] = _prediction_body


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """``t=<unix>,v1=<hex hmac-sha256 of "<t>.<body>">``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(secret: str, header: str, body: bytes, *, tolerance_s: float = 300.0) -> bool:
    """Check a signature header as a receiver should: right key, fresh timestamp."""
    try:
        parts = dict(p.split("=", 1) for p in header.split(","))
        t = int(parts["t"])
    except (ValueError, KeyError):
        return False
    if abs(time.time() - t) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, body, t), header)


def outbox_hook(session: Session, written: list[crud.Written]) -> None:
    """Write hook: one delivery row per finished prediction that has a ``callback_url``."""
    rows = [
        {
            "id": new_id("whd"),
            "tenant": w.tenant,
            "subject_type": "prediction",
            "subject_id": w.id,
            "url": w.callback_url,
            "next_attempt_at": utcnow(),
        }
        for w in written
        if w.callback_url
    ]
    if rows:
        session.execute(insert(WebhookDelivery), rows)


def enqueue_subject(
    session: Session, *, tenant: str, subject_type: str, subject_id: str, url: str
) -> str:
    """Create a delivery for any subject (a job, say); returns its id."""
    did = new_id("whd")
    session.add(
        WebhookDelivery(
            id=did,
            tenant=tenant,
            subject_type=subject_type,
            subject_id=subject_id,
            url=url,
            next_attempt_at=utcnow(),
        )
    )
    return did


def backoff(settings: Settings, attempt: int) -> float:
    """Seconds before attempt ``attempt + 1``: base, 2 base, 4 base and so on, capped at 5 minutes."""
    return float(min(settings.webhook_backoff_base_seconds * 2 ** (attempt - 1), 300.0))


class WebhookDispatcher:
    """Sends deliveries on a thread pool; keeps near retries in a timer heap of its own."""

    def __init__(
        self, sessions: sessionmaker[Session], settings: Settings, *, threads: int = 8
    ) -> None:
        self.sessions = sessions
        self.settings = settings
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="webhook")
        self.client = httpx.Client(timeout=settings.webhook_timeout_seconds, follow_redirects=False)
        self._timers: list[tuple[float, str]] = []
        self._cond = threading.Condition()
        self._stop = False
        self._timer_thread = threading.Thread(
            target=self._timer_loop, daemon=True, name="webhook-timer"
        )
        self._timer_thread.start()

    def after_commit(self, written: list[crud.Written]) -> None:
        """After-commit hook: send the deliveries of just-finished predictions."""
        if any(w.callback_url for w in written):
            with session_scope(self.sessions) as s:
                ids = s.scalars(
                    select(WebhookDelivery.id).where(
                        WebhookDelivery.subject_id.in_([w.id for w in written if w.callback_url]),
                        WebhookDelivery.status == "pending",
                    )
                ).all()
            self.submit(ids)

    def submit(self, delivery_ids: Sequence[str]) -> None:
        for did in delivery_ids:
            self.pool.submit(self.deliver, did)

    def _timer_loop(self) -> None:
        while True:
            with self._cond:
                while not self._stop and (
                    not self._timers or self._timers[0][0] > time.monotonic()
                ):
                    wait = None if not self._timers else self._timers[0][0] - time.monotonic()
                    self._cond.wait(wait)
                if self._stop:
                    return
                _, did = heapq.heappop(self._timers)
            self.pool.submit(self.deliver, did)

    def _schedule(self, did: str, delay: float) -> None:
        with self._cond:
            heapq.heappush(self._timers, (time.monotonic() + delay, did))
            self._cond.notify()

    def _claim(self, did: str) -> tuple[WebhookDelivery, bytes] | None:
        now = utcnow()
        lease = timedelta(seconds=self.settings.webhook_timeout_seconds * 3 + 5)
        with session_scope(self.sessions) as s:
            got = s.execute(
                update(WebhookDelivery)
                .where(
                    WebhookDelivery.id == did,
                    WebhookDelivery.status == "pending",
                    WebhookDelivery.next_attempt_at <= now + timedelta(seconds=1),
                    or_(
                        WebhookDelivery.lease_expires_at.is_(None),
                        WebhookDelivery.lease_expires_at < now,
                    ),
                )
                .values(lease_expires_at=now + lease)
                .returning(WebhookDelivery.id)
            ).first()
            if got is None:
                return None
            d = s.get(WebhookDelivery, did)
            assert d is not None
            body = BODY_LOADERS[d.subject_type](s, d.subject_id)
            if body is None:
                d.status = "failed"
                return None
            s.expunge(d)
        return d, orjson.dumps(body)

    def deliver(self, did: str) -> bool:
        """One attempt at delivery ``did``; True when the receiver answered 2xx."""
        claimed = self._claim(did)
        if claimed is None:
            return False
        d, body = claimed
        attempt = d.attempt_count + 1
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(self.settings.webhook_secret, body, int(time.time())),
            DELIVERY_HEADER: d.id,
            "User-Agent": "inferq-webhooks/1",
        }
        start = time.perf_counter()
        status_code, error = None, None
        try:
            resp = self.client.post(d.url, content=body, headers=headers)
            status_code = resp.status_code
            if not 200 <= status_code < 300:
                error = f"receiver answered {status_code}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
        duration_ms = (time.perf_counter() - start) * 1000
        ok = error is None
        retry_in = (
            None
            if ok or attempt >= self.settings.webhook_max_attempts
            else backoff(self.settings, attempt)
        )
        self._record(d, attempt, status_code, error, duration_ms, ok, retry_in)
        log.info(
            "webhook attempt",
            extra={
                "delivery": d.id,
                "attempt": attempt,
                "status_code": status_code,
                "error": error,
            },
        )
        if retry_in is not None and retry_in <= 60:
            self._schedule(d.id, retry_in)
        return ok

    def _record(
        self,
        d: WebhookDelivery,
        attempt: int,
        status_code: int | None,
        error: str | None,
        duration_ms: float,
        ok: bool,
        retry_in: float | None,
    ) -> None:
        now = utcnow()
        with session_scope(self.sessions) as s:
            s.add(
                WebhookAttempt(
                    delivery_id=d.id,
                    attempt=attempt,
                    started_at=now,
                    duration_ms=duration_ms,
                    status_code=status_code,
                    error=error,
                )
            )
            values: dict[str, object] = {"attempt_count": attempt, "lease_expires_at": None}
            if ok:
                values.update(status="delivered", delivered_at=now)
            elif retry_in is None:
                values.update(status="failed")
            else:
                values.update(next_attempt_at=now + timedelta(seconds=retry_in))
            s.execute(update(WebhookDelivery).where(WebhookDelivery.id == d.id).values(**values))

    def due(self, limit: int = 500) -> list[str]:
        """Pending deliveries whose time has come and that nobody holds (for the sweeper)."""
        now = utcnow()
        with session_scope(self.sessions) as s:
            return list(
                s.scalars(
                    select(WebhookDelivery.id)
                    .where(
                        WebhookDelivery.status == "pending",
                        WebhookDelivery.next_attempt_at <= now,
                        or_(
                            WebhookDelivery.lease_expires_at.is_(None),
                            WebhookDelivery.lease_expires_at < now,
                        ),
                    )
                    .limit(limit)
                ).all()
            )

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self.pool.shutdown(wait=True, cancel_futures=False)
        self.client.close()
