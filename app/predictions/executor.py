"""The worker's side of a model: messages of request ids in, stored results out.

One ``ModelExecutor`` per model version per process: it owns the ONNX session (through its
adapter) and a ``DynamicBatcher`` fed by every in-flight message of that model.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from app import metrics, poison
from app.batching import BatchItem, DynamicBatcher, Outcome
from app.db import predictions as crud
from app.db.base import utcnow
from app.db.engine import one_statement, session_scope
from app.registry import Registry
from app.runtime.adapters import Adapter, load_adapter
from app.settings import Settings

log = logging.getLogger(__name__)

# Called inside the transaction that stores a batch (outbox rows, job counters).
WriteHook = Callable[[Session, list[crud.Written]], None]
# Called after that transaction commits (hand webhooks to the dispatcher).
AfterCommit = Callable[[list[crud.Written]], None]


def store_results(
    sessions: sessionmaker[Session],
    rows: Sequence[crud.ResultRow],
    write_hooks: Sequence[WriteHook],
    after_commit: Sequence[AfterCommit],
) -> list[crud.Written]:
    """Write final states in one transaction with their outbox rows (webhooks, integrations) and
    the NOTIFY that wakes long-polls; then hand what was written to the after-commit hooks.
    Every way a prediction ends in a worker goes through here."""
    return store_final(
        sessions, lambda s: crud.write_results(session=s, results=rows), write_hooks, after_commit
    )


def store_final(
    sessions: sessionmaker[Session],
    write: Callable[[Session], list[crud.Written]],
    write_hooks: Sequence[WriteHook],
    after_commit: Sequence[AfterCommit],
) -> list[crud.Written]:
    """Run ``write`` (a statement that makes predictions final and returns them) with the write
    hooks and NOTIFY in its transaction, then the after-commit hooks (the sweeper ends
    ``worker_lost`` ones through here too)."""
    with session_scope(sessions) as s:
        written = write(s)
        for hook in write_hooks:
            hook(s, written)
        crud.notify_done(session=s, ids=[w.id for w in written])
    for after in after_commit:
        try:
            after(written)
        except Exception:
            log.exception("after-commit hook failed")
    return written


@dataclass(slots=True)
class MessageReport:
    """What one message's requests came to."""

    requested: int
    ran: int
    skipped: int
    statuses: dict[str, int]


class ModelExecutor:
    """Batches and runs one model version; writes each batch's results in one statement."""

    def __init__(
        self,
        adapter: Adapter,
        *,
        sessions: sessionmaker[Session],
        settings: Settings,
        write_hooks: Sequence[WriteHook] = (),
        after_commit: Sequence[AfterCommit] = (),
    ) -> None:
        self.adapter = adapter
        self.sessions = sessions
        self.settings = settings
        self.write_hooks = list(write_hooks)
        self.after_commit = list(after_commit)
        self.metrics = metrics.ModelMetrics(adapter.entry.manifest.name)
        b = adapter.entry.manifest.batching
        self.batcher = DynamicBatcher(
            adapter.run,
            max_batch_size=b.max_batch_size,
            max_delay_ms=b.max_delay_ms,
            length_buckets=b.length_buckets,
            max_batch_tokens=b.max_batch_tokens,
            sink=self._store,
            writer=ThreadPoolExecutor(
                settings.writer_threads, thread_name_prefix=f"writer-{adapter.entry.manifest.name}"
            ),
            observer=self.metrics,
        )

    def start(self, runners: int) -> None:
        self.batcher.start(runners, name=f"batcher-{self.adapter.entry.manifest.name}")

    def stop(self) -> None:
        self.batcher.stop()

    def _store(self, items: list[BatchItem], outcomes: list[Outcome]) -> None:
        rows = [
            crud.ResultRow(
                id=item.key,
                status=o.status,
                output=o.value,
                error_code=o.error_code,
                error_message=o.error_message,
                batch_size=o.batch_size,
                run_ms=o.run_ms,
            )
            for item, o in zip(items, outcomes, strict=True)
        ]
        store_results(self.sessions, rows, self.write_hooks, self.after_commit)
        self.metrics.ended((o.status, o.error_code) for o in outcomes)

    def run_rows(self, rows: Sequence[crud.Claimed], *, timeout: float = 600.0) -> MessageReport:
        """Run ``rows`` (claimed by this worker) through the batcher; return once all are stored.

        Raises whatever the store raised (the message is then retried, not acknowledged).
        """
        now = utcnow()
        if not rows:
            return MessageReport(0, 0, 0, {})
        prepared = self._prepare([r.input for r in rows], [r.id for r in rows])
        clock_now = self.batcher.clock()
        futures = []
        for row in rows:
            if row.id not in prepared:
                continue
            deadline = None
            if row.deadline_at is not None:
                deadline = clock_now + (row.deadline_at - now).total_seconds()
            payload = prepared[row.id]
            item = BatchItem(
                key=row.id,
                payload=payload,
                length=self.adapter.length(payload),
                priority=row.priority,
                deadline=deadline,
            )
            waited = 0.0
            if row.created_at is not None:
                item.accepted_at = clock_now - (now - row.created_at).total_seconds()
                if self.settings.count_queue_wait:
                    waited = (now - row.created_at).total_seconds()
            futures.append(self.batcher.submit(item, waited=waited))
        done, not_done = wait(futures, timeout=timeout)
        if not_done:
            raise TimeoutError(f"{len(not_done)} requests not stored within {timeout}s")
        statuses: dict[str, int] = {}
        for f in done:
            outcome = f.result()  # re-raises a store failure
            statuses[outcome.status] = statuses.get(outcome.status, 0) + 1
        skipped = statuses.get("skipped", 0)
        return MessageReport(len(rows), len(futures) - skipped, skipped, statuses)

    def run_alone(self, row: crud.Claimed, *, timeout: float = 600.0) -> MessageReport:
        """Run one claimed row in a batch of its own, on this thread (a row whose worker was
        lost: see ``app.poison``); returns once it is stored."""
        prepared = self._prepare([row.input], [row.id])
        if row.id not in prepared:
            return MessageReport(1, 0, 0, {"failed": 1})
        payload = prepared[row.id]
        item = BatchItem(row.id, payload, self.adapter.length(payload), row.priority)
        if row.deadline_at is not None and row.deadline_at <= utcnow():
            message = "deadline passed before it ran"
            self._store([item], [Outcome("expired", error_code="expired", error_message=message)])
            return MessageReport(1, 0, 0, {"expired": 1})
        self.batcher.process([item])
        outcome = item.future.result(timeout)  # re-raises a store failure
        return MessageReport(1, 1, 0, {outcome.status: 1})

    def _prepare(self, inputs: list[dict], ids: list[str]) -> dict[str, object]:  # type: ignore[type-arg]
        """Tokenise / tensorise in one call; an input that breaks it fails alone."""
        poison.crash_if_marked(inputs)  # test only, see ``app.poison``
        try:
            return dict(zip(ids, self.adapter.prepare(inputs), strict=True))
        except Exception:
            out: dict[str, object] = {}
            failed: list[crud.ResultRow] = []
            for rid, inp in zip(ids, inputs, strict=True):
                try:
                    out[rid] = self.adapter.prepare([inp])[0]
                except Exception as exc:
                    failed.append(
                        crud.ResultRow(
                            rid,
                            "failed",
                            error_code="invalid_input",
                            error_message=f"preprocessing failed: {exc}",
                        )
                    )
            store_results(self.sessions, failed, self.write_hooks, self.after_commit)
            self.metrics.ended((r.status, r.error_code) for r in failed)
            return out


class ExecutorPool:
    """The executors of one worker process, built lazily, one per model version."""

    def __init__(
        self,
        registry: Registry,
        *,
        sessions: sessionmaker[Session],
        settings: Settings,
        write_hooks: Sequence[WriteHook] = (),
        after_commit: Sequence[AfterCommit] = (),
    ) -> None:
        self.registry = registry
        self.sessions = sessions
        self.settings = settings
        self.write_hooks = write_hooks
        self.after_commit = after_commit
        self._lock = threading.Lock()
        self._executors: dict[tuple[str, str], ModelExecutor] = {}

    def get(self, name: str, version: str | None = None) -> ModelExecutor:
        entry = self.registry.get(name, version)
        key = (name, entry.manifest.version)
        with self._lock:
            ex = self._executors.get(key)
            if ex is None:
                adapter = load_adapter(
                    entry,
                    intra_op_threads=self.settings.intra_op_threads,
                    providers=self.settings.providers or None,
                )
                ex = ModelExecutor(
                    adapter,
                    sessions=self.sessions,
                    settings=self.settings,
                    write_hooks=self.write_hooks,
                    after_commit=self.after_commit,
                )
                ex.start(self.settings.effective_runner_threads)
                metrics.runtime(name, key[1], getattr(adapter, "session", None))
                self._executors[key] = ex
            return ex

    def run(self, model: str, ids: Sequence[str]) -> list[MessageReport]:
        """Claim a message's runnable ids and run them, grouped by the version each was
        accepted for. Ids already finished, cancelled or held by another worker are skipped;
        those whose worker was lost run alone, one at a time (``run_lost``)."""
        lease = timedelta(seconds=self.settings.lease_seconds)
        with one_statement(self.sessions) as conn:  # one UPDATE: its own transaction
            rows = crud.claim(session=conn, ids=ids, lease=lease)
        by_version: dict[str, list[crud.Claimed]] = {}
        for r in rows:
            if r.model == model:
                by_version.setdefault(r.model_version, []).append(r)
        reports = [self.get(model, v).run_rows(vrows) for v, vrows in by_version.items()]
        if len(rows) < len(ids):
            claimed = {r.id for r in rows}
            reports += self.run_lost(model, [i for i in ids if i not in claimed])
        return reports

    def run_lost(self, model: str, ids: Sequence[str]) -> list[MessageReport]:
        """Run those of ``ids`` whose worker was lost, each claimed and run alone while this
        process runs no other such row (``app.poison.ISOLATION``): if the worker dies again,
        the row it was running is the one to blame, and nothing else is charged a loss."""
        lease = timedelta(seconds=self.settings.lease_seconds)
        most = self.settings.max_attempts
        with one_statement(self.sessions) as conn:
            lost = crud.lost_ids(session=conn, ids=ids, max_attempts=most)
        reports = []
        for pid in lost:
            with poison.ISOLATION:
                with one_statement(self.sessions) as conn:
                    row = crud.claim_lost(
                        session=conn, prediction_id=pid, lease=lease, max_attempts=most
                    )
                if row is not None and row.model == model:
                    reports.append(self.get(model, row.model_version).run_alone(row))
        if lost:
            log.info("ran rows of a lost worker alone", extra={"model": model, "count": len(lost)})
        return reports

    def fail(
        self, ids: Sequence[str], *, code: str, message: str, model: str | None = None
    ) -> list[crud.Written]:
        """End ``ids`` (of ``model``) as failed (the model cannot run here), webhooks and NOTIFY
        included."""
        rows = [crud.ResultRow(i, "failed", error_code=code, error_message=message) for i in ids]
        written = store_results(self.sessions, rows, self.write_hooks, self.after_commit)
        if model is not None:
            metrics.ended(model, "failed", code, len(written))
        return written

    def stop(self) -> None:
        for ex in self._executors.values():
            ex.stop()
