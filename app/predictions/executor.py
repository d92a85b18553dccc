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
from types import SimpleNamespace

import orjson
from sqlalchemy.orm import Session, sessionmaker

from app import metrics, poison, tracing
from app.batching import BatchItem, DynamicBatcher, Outcome
from app.db import predictions as crud
from app.db.base import utcnow
from app.db.engine import one_statement, session_scope, while_unavailable
from app.errors import UnknownModel
from app.predictions.views import prediction_public
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
    *,
    retry_s: float = 0.0,
) -> list[crud.Written]:
    """Write final states in one transaction with their outbox rows (webhooks, integrations) and
    the NOTIFY that wakes long-polls; then hand what was written to the after-commit hooks.
    Every way a prediction ends in a worker goes through here. ``retry_s``: how long to keep
    trying while the database is away (the write is fenced, so a repeat is harmless)."""
    return store_final(
        sessions,
        lambda s: crud.write_results(session=s, results=rows),
        write_hooks,
        after_commit,
        retry_s=retry_s,
        finals=lambda written: final_docs(rows, written),
    )


def final_docs(rows: Sequence[crud.ResultRow], written: Sequence[crud.Written]) -> list[crud.Final]:
    """The public documents of what was just written (as ``GET`` would read them back), for
    the NOTIFY that wakes their waiting callers; none where the write did not return them."""
    outputs = {r.id: r.output for r in rows}
    out = []
    for w in written:
        if w.public is None:
            continue
        doc = prediction_public(SimpleNamespace(id=w.id, output=outputs.get(w.id), **w.public))
        out.append(
            crud.Final(
                w.id,
                w.tenant,
                w.public["expires_at"],
                orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY),
            )
        )
    return out


def store_final(
    sessions: sessionmaker[Session],
    write: Callable[[Session], list[crud.Written]],
    write_hooks: Sequence[WriteHook],
    after_commit: Sequence[AfterCommit],
    *,
    retry_s: float = 0.0,
    finals: Callable[[list[crud.Written]], list[crud.Final]] | None = None,
) -> list[crud.Written]:
    """Run ``write`` (a statement that makes predictions final and returns them) with the write
    hooks and NOTIFY in its transaction, then the after-commit hooks (the sweeper ends
    ``worker_lost`` ones through here too). ``finals``: the documents the NOTIFY carries."""

    def transaction() -> list[crud.Written]:
        with session_scope(sessions) as s:
            written = write(s)
            for hook in write_hooks:
                hook(s, written)
            crud.notify_done(
                session=s,
                ids=[w.id for w in written],
                finals=finals(written) if finals is not None and written else (),
            )
        return written

    written = while_unavailable(transaction, budget_s=retry_s, what="results")
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
            trace_name=f"inferq.batch {adapter.entry.manifest.name}",
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
                claim=item.token,
            )
            for item, o in zip(items, outcomes, strict=True)
        ]
        name = self.adapter.entry.manifest.name
        poison.hold_before_write()  # test only, see ``app.poison``
        with tracing.span("inferq.store", attributes={"inferq.model": name, "db.rows": len(rows)}):
            # results in hand are not given up for a database restart or a partition: they are
            # written once it is back (for up to two leases). Under the lease they land; past
            # it, the fence refuses them if another worker claimed the rows since
            written = store_results(
                self.sessions,
                rows,
                self.write_hooks,
                self.after_commit,
                retry_s=self.settings.lease_seconds * 2,
            )
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "results stored",
                    extra={
                        "model": name,
                        "count": len(written),
                        "trace_ids": sorted({i.trace.trace_id for i in items if i.trace}),
                    },
                )
        if len(written) < len(rows):
            log.warning(
                "result writes refused: the lease was lost",
                extra={
                    "model": self.adapter.entry.manifest.name,
                    "count": len(rows) - len(written),
                    "reason": "claimed again by another worker after this one's lease ran out,"
                    " or cancelled or ended meanwhile; the stored state is kept",
                },
            )
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
        spans: list[tuple[tracing.Span, BatchItem]] = []
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
                token=row.attempts,
            )
            item.trace = self._trace(row, item, spans)
            waited = 0.0
            if row.created_at is not None:
                item.accepted_at = clock_now - (now - row.created_at).total_seconds()
                if self.settings.count_queue_wait:
                    waited = (now - row.created_at).total_seconds()
            futures.append(self.batcher.submit(item, waited=waited))
        done, not_done = wait(futures, timeout=timeout)
        _end_spans(spans)
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
        item = BatchItem(
            row.id, payload, self.adapter.length(payload), row.priority, token=row.attempts
        )
        item.trace = tracing.parse(row.traceparent)
        if row.deadline_at is not None and row.deadline_at <= utcnow():
            message = "deadline passed before it ran"
            self._store([item], [Outcome("expired", error_code="expired", error_message=message)])
            return MessageReport(1, 0, 0, {"expired": 1})
        self.batcher.process([item])
        outcome = item.future.result(timeout)  # re-raises a store failure
        return MessageReport(1, 1, 0, {outcome.status: 1})

    def _trace(
        self, row: crud.Claimed, item: BatchItem, spans: list[tuple[tracing.Span, BatchItem]]
    ) -> tracing.TraceContext | None:
        """The request's trace context: its row's, or (recording spans) that of a new span for
        its handling here, a child of the API's (ended by ``_end_spans``)."""
        trace = tracing.parse(row.traceparent)
        if not tracing.enabled():
            return trace
        span = tracing.start(
            f"inferq.request {row.model}",
            parent=trace,
            kind=tracing.CONSUMER,
            attributes={"inferq.prediction_id": row.id, "inferq.model_version": row.model_version},
        )
        spans.append((span, item))
        return span.context

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


def _end_spans(spans: Sequence[tuple[tracing.Span, BatchItem]]) -> None:
    for span, item in spans:
        f = item.future
        if not f.done() or f.exception() is not None:
            span.fail("not stored")
        else:
            outcome = f.result()
            span.set("inferq.status", outcome.status)
            span.set("inferq.batch_size", outcome.batch_size)
            if outcome.status == "failed":
                span.fail(outcome.error_code or "failed")
        span.end()


class _Waiting:
    __slots__ = ("done", "error", "ids", "lead", "rows")

    def __init__(self, ids: Sequence[str]) -> None:
        self.ids = ids
        self.rows: list[crud.Claimed] = []
        self.error: BaseException | None = None
        self.lead = False
        """Woken to run the next claim (for itself and whoever waits), not with its rows."""
        self.done = threading.Event()


class ClaimGroup:
    """The claims of messages a worker takes at the same time, in one statement (group commit).

    A message's thread that finds no claim running runs one, for its ids; the messages that come
    while it runs wait, and the first of them runs the next claim, for all of them. Under load a
    worker takes several messages at once (a prefetch, each on a thread) and one ``UPDATE …
    RETURNING`` claims them all; alone, a message is claimed at once as before. Each gets the
    rows of its own ids (the first also what the claim pulled besides: queued ``high``
    requests); a failed claim fails each of them (their messages are retried)."""

    def __init__(self, claim: Callable[[list[str]], list[crud.Claimed]]) -> None:
        self._claim = claim
        self._lock = threading.Lock()
        self._waiting: list[_Waiting] = []
        self._running = False

    def claim(self, ids: Sequence[str]) -> list[crud.Claimed]:
        me = _Waiting(ids)
        with self._lock:
            self._waiting.append(me)
            me.lead = not self._running
            self._running = True
        while True:
            if me.lead:
                me.lead = False
                self._round()
            me.done.wait()
            if not me.lead:
                break
            me.done.clear()
        if me.error is not None:
            raise me.error
        return me.rows

    def _round(self) -> None:
        with self._lock:
            group, self._waiting = self._waiting, []
        try:
            rows = self._claim([i for w in group for i in w.ids])
        except BaseException as exc:
            for w in group:
                w.error = exc
        else:
            by_id = {r.id: r for r in rows}
            for w in group:
                w.rows = [by_id.pop(i) for i in w.ids if i in by_id]
            group[0].rows += by_id.values()  # pulled besides the messages' own ids
        for w in group:
            w.done.set()
        with self._lock:  # the next claim is run by the first that came meanwhile
            if self._waiting:
                heir = self._waiting[0]
                heir.lead = True
                heir.done.set()
            else:
                self._running = False


class VersionNotHere(Exception):
    """This host lacks the model version some claimed requests are pinned to; they were put
    back (queued, their claim undone) for a worker that has it."""

    def __init__(self, model: str, version: str, count: int) -> None:
        super().__init__(f"{count} requests of {model}:{version}: not on this host")
        self.model, self.version, self.count = model, version, count


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
        self._claim_groups: dict[str, ClaimGroup] = {}

    def get(self, name: str, version: str | None = None) -> ModelExecutor:
        """The executor of ``name`` (``version``, or the served one); a version this host does
        not have yet is looked for again (``Registry.find``: reload, pull from
        ``models_source``) before ``UnknownModel``."""
        entry = self.registry.find(name, version, source=self.settings.models_source)
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
        rows = self._claims(model).claim(ids)
        by_version: dict[str, list[crud.Claimed]] = {}
        for r in rows:
            by_version.setdefault(r.model_version, []).append(r)
        reports, missing = [], []
        for v, vrows in by_version.items():
            try:
                ex = self.get(model, v)
            except UnknownModel as exc:
                missing.append((v, vrows, exc))
                continue
            reports.append(ex.run_rows(vrows))
        back = [(v, self._not_here(model, vrows, unknown)) for v, vrows, unknown in missing]
        if any(n for _, n in back):
            versions = ", ".join(v for v, n in back if n)
            raise VersionNotHere(model, versions, sum(n for _, n in back))
        claimed = {r.id for r in rows}  # (a claim may bring more: queued ``high`` requests)
        unclaimed = [i for i in ids if i not in claimed]
        if unclaimed:
            reports += self.run_lost(model, unclaimed)
        return reports

    def _claims(self, model: str) -> ClaimGroup:
        with self._lock:
            group = self._claim_groups.get(model)
            if group is None:
                lease = timedelta(seconds=self.settings.lease_seconds)

                def claim(ids: list[str]) -> list[crud.Claimed]:
                    with one_statement(self.sessions) as conn:  # one UPDATE: its own transaction
                        return crud.claim(session=conn, ids=ids, model=model, lease=lease)

                group = self._claim_groups[model] = ClaimGroup(claim)
            return group

    def _not_here(self, model: str, rows: Sequence[crud.Claimed], exc: UnknownModel) -> int:
        """Rows of a version this host lacks: put back for a worker that has it (this one too,
        once it is pulled) while they may wait (``model_wait_seconds``), then failed with the
        registry's message. Returns how many were put back."""
        now = utcnow()
        wait = timedelta(seconds=self.settings.model_wait_seconds)
        young = [r for r in rows if r.created_at is not None and now - r.created_at < wait]
        old = [r for r in rows if r not in young]
        if old:
            results = [
                crud.ResultRow(
                    r.id, "failed", error_code=exc.code, error_message=exc.message, claim=r.attempts
                )
                for r in old
            ]
            store_results(self.sessions, results, self.write_hooks, self.after_commit)
            metrics.ended(model, "failed", exc.code, len(old))
        if not young:
            return 0
        with session_scope(self.sessions) as s:
            return crud.unclaim(session=s, rows=young)

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
                        session=conn, prediction_id=pid, model=model, lease=lease, max_attempts=most
                    )
                if row is not None:
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
