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
    with session_scope(sessions) as s:
        written = crud.write_results(session=s, results=rows)
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
            if self.settings.count_queue_wait and row.created_at is not None:
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

    def _prepare(self, inputs: list[dict], ids: list[str]) -> dict[str, object]:  # type: ignore[type-arg]
        """Tokenise / tensorise in one call; an input that breaks it fails alone."""
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
                self._executors[key] = ex
            return ex

    def run(self, model: str, ids: Sequence[str]) -> list[MessageReport]:
        """Claim a message's runnable ids and run them, grouped by the version each was
        accepted for. Ids already finished, cancelled or held by another worker are skipped."""
        lease = timedelta(seconds=self.settings.lease_seconds)
        with one_statement(self.sessions) as conn:  # one UPDATE: its own transaction
            rows = crud.claim(session=conn, ids=ids, lease=lease)
        by_version: dict[str, list[crud.Claimed]] = {}
        for r in rows:
            if r.model == model:
                by_version.setdefault(r.model_version, []).append(r)
        return [self.get(model, v).run_rows(vrows) for v, vrows in by_version.items()]

    def fail(self, ids: Sequence[str], *, code: str, message: str) -> list[crud.Written]:
        """End ``ids`` as failed (the model cannot run here), webhooks and NOTIFY included."""
        rows = [crud.ResultRow(i, "failed", error_code=code, error_message=message) for i in ids]
        return store_results(self.sessions, rows, self.write_hooks, self.after_commit)

    def stop(self) -> None:
        for ex in self._executors.values():
            ex.stop()
