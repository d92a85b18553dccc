"""Admission control: bounds on what waits, checked before anything is stored.

Three bounds, each with its own limit (defaults for all tenants, overrides per tenant):

- per tenant, the inputs queued or running (predictions, plus the unfinished lines of its jobs);
- per tenant, a rate of inputs per second with a burst (a token bucket, per API key's tenant);
- per model, the inputs queued or running overall, so one model's backlog cannot fill the
  database for everyone.

The shared counter is Postgres, in the transaction that stores the inputs (the API's group
commit makes that one check per flush, not per request). Each bound has a row in
``admission_state``; a flush locks the rows of the bounds it touches (``SELECT … FOR UPDATE`` in
scope order: no deadlocks; Postgres hands back the newest committed row once the lock is ours),
decides, and writes them back: two statements per flush. API processes on any number of hosts
therefore see each other's admissions exactly. A row's ``live`` is recounted from the
predictions and jobs tables once it is older than ``RECOUNT_S`` (partial indexes make that
cheap) and raised by every admission in between, so it never counts less than the truth: a
bound may refuse up to a second of drain early, never admit past its limit. The decrease seen
at each recount gives the drain rate behind ``Retry-After``.

Over a bound, a submission is refused whole (nothing of it stored) with ``OverLimit``: a 429
naming the bound, with ``Retry-After`` in seconds. An accepted request is never refused later.
On SQLite (one host, one writer at a time) the same runs without row locks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.orm import Session

from app.errors import RateLimited
from app.settings import Settings

RECOUNT_S = 1.0
"""How old a bound's count may get before it is counted again from the tables."""
MAX_RETRY_AFTER_S = 300
"""Longest ``Retry-After``: what a bound answers when nothing has drained lately."""

LIVE = "('queued', 'running')"
COUNT_SQL = {
    "tenant": f"""SELECT
        (SELECT count(*) FROM (SELECT 1 FROM predictions WHERE tenant = :key
            AND status IN {LIVE} LIMIT :cap) p)
      + (SELECT coalesce(sum(total - succeeded - failed - cancelled), 0) FROM jobs
            WHERE tenant = :key AND status IN {LIVE})""",
    "model": f"""SELECT
        (SELECT count(*) FROM (SELECT 1 FROM predictions WHERE model = :key
            AND status IN {LIVE} LIMIT :cap) p)
      + (SELECT coalesce(sum(total - succeeded - failed - cancelled), 0) FROM jobs
            WHERE model = :key AND status IN {LIVE})""",
}


class OverLimit(RateLimited):
    """A bound would be passed: nothing of the request was stored."""

    def __init__(self, message: str, *, bound: str, limit: float, retry_after: int) -> None:
        super().__init__(message)
        self.bound = bound
        self.limit = limit
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Limits:
    """One tenant's bounds (0: none)."""

    max_queued: int
    rate: float
    burst: float


@dataclass(slots=True)
class _State:
    """One bound's row, as read under its lock."""

    scope: str
    live: float
    drain_per_s: float
    tokens: float
    dirty: bool = False
    fresh_count: bool = False


class Admission:
    """Decides, inside the transaction that would store them, which submissions may go in."""

    def __init__(self, settings: Settings) -> None:
        self.defaults = Limits(
            settings.max_queued_per_tenant,
            settings.tenant_rate,
            settings.tenant_burst or settings.tenant_rate,
        )
        self.overrides = {
            tenant: Limits(
                int(o.get("max_queued", self.defaults.max_queued)),
                float(o.get("rate", self.defaults.rate)),
                float(o.get("burst", o.get("rate", self.defaults.burst))),
            )
            for tenant, o in settings.tenant_limits.items()
        }
        self.max_queued_per_model = settings.max_queued_per_model

    def limits(self, tenant: str) -> Limits:
        return self.overrides.get(tenant, self.defaults)

    @property
    def active(self) -> bool:
        d = self.defaults
        return bool(d.max_queued or d.rate or self.max_queued_per_model or self.overrides)

    # --- the check ----------------------------------------------------------------------------

    def admit(
        self, session: Session, wants: Sequence[tuple[str, str, int]]
    ) -> list[OverLimit | None]:
        """For each ``(tenant, model, inputs)`` in order: None (admitted, counted) or why not."""
        if not self.active or not wants:
            return [None] * len(wants)
        scopes = sorted({f"t:{t}" for t, _, _ in wants} | {f"m:{m}" for _, m, _ in wants})
        states, now = self._lock(session, scopes)
        verdicts = [self._one(states, t, m, n) for t, m, n in wants]
        _save(session, [st for st in states.values() if st.dirty], now)
        return verdicts

    def admit_lines(self, session: Session, tenant: str, model: str, lines: int) -> None:
        """Count a job's ``lines`` against the queued bounds (the rate bound is for requests),
        in the transaction that seals the job; ``OverLimit`` if they do not fit."""
        if not self.active:
            return
        states, now = self._lock(session, sorted([f"m:{model}", f"t:{tenant}"]))
        over = self._queued(states, tenant, model, lines)
        if over is not None:
            raise over
        for st in states.values():
            st.live += lines
        _save(session, list(states.values()), now)

    def too_big(self, tenant: str, model: str, lines: int) -> OverLimit | None:
        """A job of ``lines`` that no backlog could ever make room for (checked as it streams)."""
        for limit, what, bound in (
            (self.limits(tenant).max_queued, f"tenant {tenant!r}", "tenant_queued"),
            (self.max_queued_per_model, f"model {model!r}", "model_queued"),
        ):
            if limit and lines > limit:
                return OverLimit(
                    f"a job of more than {limit} lines is over {what}'s bound of {limit} inputs"
                    " queued or running; split it",
                    bound=bound,
                    limit=limit,
                    retry_after=MAX_RETRY_AFTER_S,
                )
        return None

    def _one(self, states: dict[str, _State], tenant: str, model: str, n: int) -> OverLimit | None:
        over = self._queued(states, tenant, model, n) or self._rate(
            states[f"t:{tenant}"], tenant, n
        )
        if over is None:
            for sc in (f"t:{tenant}", f"m:{model}"):
                states[sc].live += n
                states[sc].dirty = True
            lim = self.limits(tenant)
            if lim.rate:
                states[f"t:{tenant}"].tokens -= n
        return over

    def _queued(
        self, states: dict[str, _State], tenant: str, model: str, n: int
    ) -> OverLimit | None:
        lim = self.limits(tenant)
        for st, limit, what in (
            (states[f"t:{tenant}"], lim.max_queued, f"tenant {tenant!r}"),
            (states[f"m:{model}"], self.max_queued_per_model, f"model {model!r}"),
        ):
            if limit and st.live + n > limit:
                bound = "tenant_queued" if st.scope.startswith("t:") else "model_queued"
                wait = _drain_wait(st.live + n - limit, st.drain_per_s)
                return OverLimit(
                    f"{what} has {int(st.live)} inputs queued or running, the limit is {limit}; "
                    f"{n} more do not fit (retry in about {wait} s, at the rate work drains)",
                    bound=bound,
                    limit=limit,
                    retry_after=wait,
                )
        return None

    def _rate(self, st: _State, tenant: str, n: int) -> OverLimit | None:
        lim = self.limits(tenant)
        if not lim.rate:
            return None
        if n > lim.burst:
            return OverLimit(
                f"{n} inputs in one request is over tenant {tenant!r}'s burst of {lim.burst:g}",
                bound="tenant_rate",
                limit=lim.rate,
                retry_after=MAX_RETRY_AFTER_S,
            )
        if st.tokens >= n:
            return None
        wait = max(1, math.ceil((n - st.tokens) / lim.rate))
        return OverLimit(
            f"tenant {tenant!r} is over its rate of {lim.rate:g} inputs/s (burst {lim.burst:g}); "
            f"retry in {wait} s",
            bound="tenant_rate",
            limit=lim.rate,
            retry_after=wait,
        )

    # --- the rows -----------------------------------------------------------------------------

    def _lock(self, session: Session, scopes: list[str]) -> tuple[dict[str, _State], datetime]:
        """Lock the scopes' rows (creating missing ones) and read them, recounting old counts.

        ``SELECT … FOR UPDATE`` in scope order: one global order (no deadlocks), and Postgres
        hands back the newest committed row once the lock is ours.
        """
        rows = _locked(session, scopes)
        missing = [sc for sc in scopes if sc not in rows]
        if missing:
            session.execute(INSERT_MISSING, [{"scope": sc} for sc in missing])
            rows = _locked(session, scopes)
        now = next(iter(rows.values())).now
        if isinstance(now, str):
            now = datetime.fromisoformat(now)
        return {sc: self._state(session, sc, rows[sc], now) for sc in scopes}, now

    def _state(self, session: Session, scope: str, row: Any, now: datetime) -> _State:
        st = _State(scope, float(row.live), float(row.drain_per_s), 0.0)
        kind, key = ("tenant" if scope.startswith("t:") else "model"), scope[2:]
        age = _age(now, row.counted_at)
        if age >= RECOUNT_S:
            counted = float(
                session.execute(
                    text(COUNT_SQL[kind]), {"key": key, "cap": self._cap(kind, key)}
                ).scalar_one()
            )
            if age < 3600:  # a row just created (or long idle) measures no drain
                drained = max(0.0, st.live - counted)
                st.drain_per_s = 0.5 * st.drain_per_s + 0.5 * drained / age
            st.live, st.fresh_count, st.dirty = counted, True, True
        if kind == "tenant":
            lim = self.limits(key)
            refill = lim.rate * _age(now, row.tokens_at)
            st.tokens = min(lim.burst, float(row.tokens) + refill)
            st.dirty = st.dirty or bool(lim.rate)
        return st

    def _cap(self, kind: str, key: str) -> int:
        """Counting stops a little past the limit: nothing above it changes a decision."""
        limit = self.limits(key).max_queued if kind == "tenant" else self.max_queued_per_model
        return (limit + 1) if limit else 1_000_000_000

    # --- for GET /v1/usage ------------------------------------------------------------------

    def usage(self, session: Session, tenant: str) -> dict[str, Any]:
        """The tenant's current counts and limits (counted afresh, read only)."""
        lim = self.limits(tenant)
        live = session.execute(
            text(COUNT_SQL["tenant"]), {"key": tenant, "cap": 1_000_000_000}
        ).scalar_one()
        by_model = session.execute(
            text(
                f"SELECT model, count(*) FROM predictions WHERE tenant = :t AND status IN {LIVE}"
                " GROUP BY model"
            ),
            {"t": tenant},
        ).all()
        return {
            "tenant": tenant,
            "queued_or_running": int(live),
            "by_model": {m: int(n) for m, n in by_model},
            "limits": {
                "max_queued": lim.max_queued or None,
                "rate_per_s": lim.rate or None,
                "burst": lim.burst if lim.rate else None,
                "max_queued_per_model": self.max_queued_per_model or None,
            },
        }


EPOCH = "1970-01-01T00:00:00+00:00"
INSERT_MISSING = text(
    "INSERT INTO admission_state (scope, live, counted_at, drain_per_s, tokens, tokens_at)"
    f" VALUES (:scope, 0, '{EPOCH}', 0, 0, '{EPOCH}') ON CONFLICT (scope) DO NOTHING"
)
SELECT_ROWS = (
    "SELECT scope, live, counted_at, drain_per_s, tokens, tokens_at, {now} AS now"
    " FROM admission_state WHERE scope IN :scopes ORDER BY scope"
)
SELECT_LOCKED = {
    "postgresql": text(SELECT_ROWS.format(now="now()") + " FOR UPDATE").bindparams(
        bindparam("scopes", expanding=True)
    ),
    "sqlite": text(SELECT_ROWS.format(now="strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')")).bindparams(
        bindparam("scopes", expanding=True)
    ),
}
UPDATE_ROW = text(
    "UPDATE admission_state SET live = :live, drain_per_s = :drain, tokens = :tokens,"
    " tokens_at = :now, counted_at = CASE WHEN :fresh THEN :now ELSE counted_at END"
    " WHERE scope = :scope"
)


def _locked(session: Session, scopes: list[str]) -> dict[str, Any]:
    dialect = session.get_bind().dialect.name
    stmt = SELECT_LOCKED["postgresql" if dialect == "postgresql" else "sqlite"]
    return {r.scope: r for r in session.execute(stmt, {"scopes": scopes})}


def _save(session: Session, states: list[_State], now: datetime) -> None:
    """Write the changed rows back (one executemany)."""
    if states:
        session.execute(
            UPDATE_ROW,
            [
                {
                    "scope": st.scope,
                    "live": st.live,
                    "drain": st.drain_per_s,
                    "tokens": st.tokens,
                    "now": now,
                    "fresh": st.fresh_count,
                }
                for st in states
            ],
        )


def _age(now: datetime, then: datetime | str | None) -> float:
    if then is None:
        return math.inf
    if isinstance(then, str):  # SQLite hands back text
        then = datetime.fromisoformat(then)
    if then.tzinfo is None and now.tzinfo is not None:
        then = then.replace(tzinfo=now.tzinfo)
    return (now - then).total_seconds()


def _drain_wait(excess: float, drain_per_s: float) -> int:
    """Seconds until ``excess`` inputs have drained at the measured rate (capped)."""
    if drain_per_s <= 1e-6:
        return MAX_RETRY_AFTER_S
    return int(min(MAX_RETRY_AFTER_S, max(1, math.ceil(excess / drain_per_s))))
