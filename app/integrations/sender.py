"""Sends integration deliveries: a thread pool, every attempt recorded, retries with backoff.

A delivery is claimed under a lease (so two processes never send it at once), sent, and its
attempt recorded with the status code and a redacted error. Network errors, 5xx, 408, 409, 425
and 429 are retried: after ``retry_after`` (Telegram's ``parameters.retry_after`` or a
``Retry-After`` header) when the other side says how long, else with exponential backoff. Other
4xx answers are final. Near retries wait in this process's timer heap; far ones, and those of
a process that died, are found by the sweeper through ``due``.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta

import httpx
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from app.db import integrations as crud
from app.db.base import utcnow
from app.db.engine import session_scope
from app.db.integrations import IntegrationAttempt, IntegrationDelivery
from app.errors import InferqError
from app.integrations.base import Reply
from app.integrations.config import IntegrationSettings
from app.integrations.outbox import connectors
from app.integrations.secrets import SecretBox, install_log_redaction, redact
from app.integrations.store import Loaded, opened
from app.settings import Settings

log = logging.getLogger(__name__)

RETRY_STATUSES = {408, 409, 425, 429}
TIMER_HORIZON_S = 60.0


@dataclass(slots=True)
class Result:
    """What one attempt came to."""

    ok: bool
    status_code: int | None = None
    error: str | None = None
    retryable: bool = True
    retry_after: float | None = None


class IntegrationSender:
    """Delivers outbox rows on its own threads; never on a thread that runs batches."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        settings: Settings,
        isettings: IntegrationSettings,
        *,
        box: SecretBox | None = None,
    ) -> None:
        self.sessions = sessions
        self.isettings = isettings
        self.box = box or SecretBox.from_settings(settings, isettings)
        self.connectors = connectors(isettings.telegram_api_base)
        self.pool = ThreadPoolExecutor(
            isettings.integration_sender_threads, thread_name_prefix="integration-send"
        )
        self.client = httpx.Client(
            timeout=isettings.integration_timeout_seconds, follow_redirects=False
        )
        install_log_redaction()
        self._timers: list[tuple[float, str]] = []
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._timer_loop, daemon=True, name="integ-timer")
        self._thread.start()

    # --- scheduling -------------------------------------------------------------------------

    def submit(self, delivery_ids: Sequence[str]) -> None:
        for did in delivery_ids:
            self.pool.submit(self._deliver_logged, did)

    def _deliver_logged(self, did: str) -> None:
        try:
            self.deliver(did)
        except Exception as exc:
            log.error(
                "integration delivery crashed", extra={"delivery": did, "error": redact(repr(exc))}
            )

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
            self.pool.submit(self._deliver_logged, did)

    def _schedule(self, did: str, delay: float) -> None:
        with self._cond:
            heapq.heappush(self._timers, (time.monotonic() + delay, did))
            self._cond.notify()

    def backoff(self, attempt: int) -> float:
        """Base, 2 base, 4 base … capped at ``integration_backoff_max_seconds``."""
        s = self.isettings
        return float(
            min(
                s.integration_backoff_base_seconds * 2 ** (attempt - 1),
                s.integration_backoff_max_seconds,
            )
        )

    # --- one attempt ------------------------------------------------------------------------

    def _claim(self, did: str) -> tuple[IntegrationDelivery, Loaded | str] | None:
        now = utcnow()
        lease = timedelta(seconds=self.isettings.integration_timeout_seconds * 3 + 5)
        with session_scope(self.sessions) as s:
            got = s.execute(
                update(IntegrationDelivery)
                .where(
                    IntegrationDelivery.id == did,
                    IntegrationDelivery.status == "pending",
                    IntegrationDelivery.next_attempt_at <= now,
                    or_(
                        IntegrationDelivery.lease_expires_at.is_(None),
                        IntegrationDelivery.lease_expires_at < now,
                    ),
                )
                .values(lease_expires_at=now + lease)
                .returning(IntegrationDelivery.id)
            ).first()
            if got is None:
                return None
            d = s.get(IntegrationDelivery, did)
            assert d is not None
            row = crud.get_integration(session=s, integration_id=d.integration_id)
            s.expunge(d)
            if row is None or not row.enabled:
                return d, "the integration is disabled or deleted"
            try:
                return d, opened(row, self.box)
            except InferqError as exc:
                return d, exc.message

    def deliver(self, did: str) -> bool:
        """One attempt at delivery ``did``; True when the other side answered 2xx."""
        claimed = self._claim(did)
        if claimed is None:
            return False
        d, integ = claimed
        start = time.perf_counter()
        if isinstance(integ, str):
            result = Result(False, error=integ, retryable=False)
        else:
            result = self._send(d, integ)
        duration_ms = (time.perf_counter() - start) * 1000
        attempt = d.attempt_count + 1
        delay = None
        if not result.ok and result.retryable and attempt < self.isettings.integration_max_attempts:
            delay = self.backoff(attempt)
            if result.retry_after is not None:
                delay = min(result.retry_after, self.isettings.integration_backoff_max_seconds)
        self._record(d, attempt, result, duration_ms, delay)
        log.info(
            "integration delivery attempt",
            extra={
                "delivery": d.id,
                "integration": d.integration_id,
                "action": d.action,
                "attempt": attempt,
                "status_code": result.status_code,
                "error": result.error,
                "retry_in": delay,
            },
        )
        if delay is not None and delay <= TIMER_HORIZON_S:
            self._schedule(d.id, delay)
        return result.ok

    def _send(self, d: IntegrationDelivery, integ: Loaded) -> Result:
        connector = self.connectors[integ.kind]
        secrets = list(integ.secrets.values())
        try:
            out = connector.request(
                integ.config, integ.secrets, Reply(d.action, d.method, d.target, d.body)
            )
            resp = self.client.request(out.method, out.url, content=out.body, headers=out.headers)
        except httpx.HTTPError as exc:
            return Result(False, error=redact(f"{type(exc).__name__}: {exc}", secrets)[:500])
        except Exception as exc:  # a bad template, say: trying again will not help
            return Result(
                False, error=redact(f"{type(exc).__name__}: {exc}", secrets)[:500], retryable=False
            )
        code = resp.status_code
        if 200 <= code < 300:
            return Result(True, code)
        detail = redact(resp.text[:300], secrets).strip()
        error = f"answered {code}" + (f": {detail}" if detail else "")
        retryable = code >= 500 or code in RETRY_STATUSES
        retry_after = connector.retry_after(resp) if code in (429, 503) else None
        return Result(False, code, error[:500], retryable, retry_after)

    def _record(
        self,
        d: IntegrationDelivery,
        attempt: int,
        result: Result,
        duration_ms: float,
        delay: float | None,
    ) -> None:
        now = utcnow()
        with session_scope(self.sessions) as s:
            s.add(
                IntegrationAttempt(
                    delivery_id=d.id,
                    attempt=attempt,
                    started_at=now,
                    duration_ms=duration_ms,
                    status_code=result.status_code,
                    error=result.error,
                    retry_after_s=result.retry_after,
                )
            )
            values: dict[str, object] = {
                "attempt_count": attempt,
                "lease_expires_at": None,
                "last_error": result.error,
            }
            if result.ok:
                values.update(status="delivered", delivered_at=now)
            elif delay is None:
                values.update(status="failed")
            else:
                values.update(next_attempt_at=now + timedelta(seconds=delay))
            s.execute(
                update(IntegrationDelivery).where(IntegrationDelivery.id == d.id).values(**values)
            )

    # --- for the sweeper --------------------------------------------------------------------

    def due(self, limit: int = 500) -> list[str]:
        """Pending deliveries whose time has come and that nobody holds."""
        now = utcnow()
        with session_scope(self.sessions) as s:
            return list(
                s.scalars(
                    select(IntegrationDelivery.id)
                    .where(
                        IntegrationDelivery.status == "pending",
                        IntegrationDelivery.next_attempt_at <= now,
                        or_(
                            IntegrationDelivery.lease_expires_at.is_(None),
                            IntegrationDelivery.lease_expires_at < now,
                        ),
                    )
                    .order_by(IntegrationDelivery.next_attempt_at)
                    .limit(limit)
                ).all()
            )

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.client.close()
