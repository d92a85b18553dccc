"""The one dispatcher of outbound requests: claim under a lease, send, record, retry or give up.

Every delivery (a signed webhook, a Telegram ``sendMessage``, a ticket update) goes the same
way: it is claimed under a lease (so two processes never send it at once), its channel builds
the request, the request goes through the egress-guarded HTTP client, and the attempt is
recorded with what came back (errors redacted). A retryable failure waits an exponential backoff
with full jitter (``uniform(0, min(cap, base * 2**(n-1)))``), or what the receiver asked for
(``Retry-After``, Telegram's ``retry_after``); a final one makes the delivery ``dead`` with a
reason. A request the egress policy refuses is dead at once (``egress_denied``), never retried.

Near retries wait in this process's timer heap; far ones, and those of a process that died, are
found by the sweeper through ``due``. Sends run on the dispatcher's own threads, never on a
thread that runs batches.
"""

from __future__ import annotations

import heapq
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Protocol

import httpx
from sqlalchemy import or_, update
from sqlalchemy.orm import Session, sessionmaker

from app import metrics, tracing
from app.db.base import utcnow
from app.db.deliveries import DeadReason, Delivery, DeliveryAttempt, DeliveryStatus
from app.db.engine import session_scope, while_unavailable
from app.delivery import egress, outbox
from app.integrations.base import Outgoing
from app.integrations.secrets import redact
from app.retention import DEFAULT_RETENTION_S

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 409, 425, 429})
TIMER_HORIZON_S = 60.0
"""Retries due within this many seconds wait in the process's timer heap; later ones, the sweeper."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How one kind of delivery is retried."""

    max_attempts: int
    base_s: float
    cap_s: float
    timeout_s: float
    retry_client_errors: bool = False
    """Retry a 4xx besides 408/409/425/429 too (signed webhooks: any non-2xx is retried)."""


def backoff(policy: RetryPolicy, attempt: int, rng: Callable[[], float] = random.random) -> float:
    """Seconds before the attempt after ``attempt``: full jitter over a doubling, capped window."""
    return float(rng() * min(policy.cap_s, policy.base_s * 2 ** (attempt - 1)))


@dataclass(slots=True)
class Built:
    """A request ready to send, and the secrets to mask in anything written about it."""

    request: Outgoing
    secrets: list[str] = field(default_factory=list)
    retry_after: Callable[[httpx.Response], float | None] | None = None


@dataclass(slots=True)
class Dead:
    """The request cannot be built: give the delivery up with ``reason``."""

    reason: DeadReason
    error: str


class Channel(Protocol):
    """What differs between kinds of delivery: how the request is built, how it is retried."""

    kind: str
    policy: RetryPolicy

    def build(self, session: Session, delivery: Delivery) -> Built | Dead:
        """The request for ``delivery`` (inside the claim's transaction)."""
        ...


@dataclass(slots=True)
class Result:
    """What one attempt came to."""

    ok: bool
    status_code: int | None = None
    error: str | None = None
    retryable: bool = True
    retry_after: float | None = None
    dead_reason: DeadReason | None = None


class Dispatcher:
    """Delivers outbox rows of every kind on a thread pool of its own."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        channels: Mapping[str, Channel],
        policy: egress.EgressPolicy,
        *,
        threads: int = 8,
        rng: Callable[[], float] = random.random,
        resolver: egress.Resolver | None = None,
        retention_s: Callable[[str], float] | None = None,
    ) -> None:
        self.sessions = sessions
        self.retention_s = retention_s or (lambda _tenant: DEFAULT_RETENTION_S)
        """Seconds a final delivery of a tenant is kept (``app.retention``)."""
        self.channels = dict(channels)
        self.egress = policy
        self.rng = rng
        timeout = max(c.policy.timeout_s for c in self.channels.values())
        self.client = egress.guarded_client(policy, timeout=timeout, resolver=resolver)
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="deliver")
        self._timers: list[tuple[float, str]] = []
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._timer_loop, daemon=True, name="deliver-timer")
        self._thread.start()

    # --- scheduling -------------------------------------------------------------------------

    def submit(self, delivery_ids: Sequence[str]) -> None:
        for did in delivery_ids:
            self.pool.submit(self._deliver_logged, did)

    def send_pending(self, _written: object = None) -> None:
        """After-commit hook: send what this thread's write hooks just put in the outbox."""
        ids = outbox.take_pending()
        if ids:
            self.submit(ids)

    def sweep(self, limit: int = 500) -> int:
        """Send the deliveries that are due and nobody holds (the sweeper's step)."""
        with session_scope(self.sessions) as s:
            ids = outbox.due(session=s, limit=limit)
        self.submit(ids)
        return len(ids)

    def _deliver_logged(self, did: str) -> None:
        try:
            self.deliver(did)
        except Exception as exc:
            log.error("delivery crashed", extra={"delivery": did, "error": redact(repr(exc))})

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

    # --- one attempt ------------------------------------------------------------------------

    def deliver(self, did: str) -> bool:
        """One attempt at delivery ``did``; True when the other side answered 2xx."""
        claimed = self._claim(did)
        if claimed is None:
            return False
        d, built = claimed
        with tracing.span(
            f"inferq.deliver {d.kind}",
            parent=tracing.parse(d.traceparent),
            root=True,  # a delivery without a stored trace starts its own
            kind=tracing.CLIENT,
            attributes={"inferq.delivery": d.id, "inferq.attempt": d.attempt_count + 1},
        ) as span:
            ok = self._attempt(d, built)
            if not ok:
                span.fail("not delivered")
            return ok

    def _attempt(self, d: Delivery, built: Built | Dead) -> bool:
        channel = self.channels[d.kind]
        start = time.perf_counter()
        if isinstance(built, Dead):
            result = Result(False, error=built.error, retryable=False, dead_reason=built.reason)
        else:
            result = self._send(built, channel.policy)
        duration_ms = (time.perf_counter() - start) * 1000
        attempt = d.attempt_count + 1
        delay = self._delay(channel.policy, attempt - d.replay_base, result)
        self._record(d, attempt, result, duration_ms, delay)
        metrics.delivery_attempt(d.kind, ok=result.ok, final=delay is None, created_at=d.created_at)
        log.info(
            "delivery attempt",
            extra={
                "delivery": d.id,
                "kind": d.kind,
                "attempt": attempt,
                "status_code": result.status_code,
                "error": result.error,
                "retry_in": delay,
                "dead_reason": result.dead_reason if delay is None and not result.ok else None,
            },
        )
        if delay is not None and delay <= TIMER_HORIZON_S:
            self._schedule(d.id, delay)
        return result.ok

    def _delay(self, policy: RetryPolicy, attempt: int, result: Result) -> float | None:
        """Seconds until the next attempt, or None when there is none (sets the dead reason)."""
        if result.ok:
            return None
        if not result.retryable:
            result.dead_reason = result.dead_reason or DeadReason.REJECTED
            return None
        if attempt >= policy.max_attempts:
            result.dead_reason = DeadReason.MAX_ATTEMPTS
            return None
        if result.retry_after is not None:
            return min(result.retry_after, policy.cap_s)
        return backoff(policy, attempt, self.rng)

    def _claim(self, did: str) -> tuple[Delivery, Built | Dead] | None:
        now = utcnow()
        with session_scope(self.sessions) as s:
            kind = s.execute(
                update(Delivery)
                .where(
                    Delivery.id == did,
                    Delivery.status == DeliveryStatus.PENDING,
                    Delivery.next_attempt_at <= now + timedelta(seconds=1),
                    or_(Delivery.lease_expires_at.is_(None), Delivery.lease_expires_at < now),
                )
                .values(lease_expires_at=now + timedelta(seconds=self._lease_s()))
                .returning(Delivery.kind)
            ).scalar()
            if kind is None:
                return None
            d = s.get(Delivery, did)
            assert d is not None
            channel = self.channels.get(kind)
            built: Built | Dead = (
                Dead(DeadReason.UNBUILDABLE, f"no channel for deliveries of kind {kind!r}")
                if channel is None
                else channel.build(s, d)
            )
            s.expunge(d)
        return d, built

    def _lease_s(self) -> float:
        return max(c.policy.timeout_s for c in self.channels.values()) * 3 + 5

    def _send(self, built: Built, policy: RetryPolicy) -> Result:
        out, secrets = built.request, built.secrets
        try:
            egress.check_url(out.url, self.egress, field="url")
            headers = out.headers
            trace = tracing.current_header()
            if trace is not None:  # the receiver can join the trace (W3C Trace Context)
                headers = {**headers, "traceparent": trace}
            resp = self.client.request(
                out.method, out.url, content=out.body, headers=headers, timeout=policy.timeout_s
            )
        except egress.EgressDenied as exc:
            return self._denied(str(exc), secrets)
        except egress.EgressBlocked as exc:
            return self._denied(str(exc), secrets)
        except httpx.HTTPError as exc:
            return Result(False, error=redact(f"{type(exc).__name__}: {exc}", secrets)[:500])
        code = resp.status_code
        if 200 <= code < 300:
            return Result(True, code)
        detail = redact(resp.text[:300], secrets).strip()
        error = f"answered {code}" + (f": {detail}" if detail else "")
        retryable = code >= 500 or code in RETRY_STATUSES or policy.retry_client_errors
        retry_after = None
        if code in (429, 503) and built.retry_after is not None:
            retry_after = built.retry_after(resp)
        return Result(False, code, error[:500], retryable, retry_after)

    @staticmethod
    def _denied(message: str, secrets: list[str]) -> Result:
        return Result(
            False,
            error=redact(f"egress denied: {message}", secrets)[:500],
            retryable=False,
            dead_reason=DeadReason.EGRESS_DENIED,
        )

    def _record(
        self, d: Delivery, attempt: int, result: Result, duration_ms: float, delay: float | None
    ) -> None:
        # an outcome in hand is kept through a database restart: lost, the delivery would be
        # sent again once its lease ran out (within half the lease, it is not)
        while_unavailable(
            lambda: self._write_outcome(d, attempt, result, duration_ms, delay),
            budget_s=self._lease_s() / 2,
            what="delivery outcome",
        )

    def _write_outcome(
        self, d: Delivery, attempt: int, result: Result, duration_ms: float, delay: float | None
    ) -> None:
        now = utcnow()
        outcome = "delivered" if result.ok else ("retry" if delay is not None else "dead")
        with session_scope(self.sessions) as s:
            s.add(
                DeliveryAttempt(
                    delivery_id=d.id,
                    attempt=attempt,
                    started_at=now,
                    duration_ms=duration_ms,
                    status_code=result.status_code,
                    error=result.error,
                    retry_after_s=result.retry_after,
                    outcome=outcome,
                )
            )
            values: dict[str, object] = {
                "attempt_count": attempt,
                "lease_expires_at": None,
                "last_error": result.error,
            }
            if delay is None:  # final: kept from now on for the tenant's retention
                keep = timedelta(seconds=self.retention_s(d.tenant))
                values.update(expires_at=now + keep)
            if result.ok:
                values.update(status=DeliveryStatus.DELIVERED, delivered_at=now)
            elif delay is None:
                values.update(status=DeliveryStatus.DEAD, dead_reason=result.dead_reason)
            else:
                values.update(next_attempt_at=now + timedelta(seconds=delay))
            s.execute(update(Delivery).where(Delivery.id == d.id).values(**values))

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.client.close()
