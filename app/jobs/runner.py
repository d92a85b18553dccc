"""Running one chunk of a job in a worker: claim, parse, score in full batches, store once.

The chunk's valid inputs go through the model's adapter directly (no dynamic batcher: a chunk
already is a pile of work): sorted by length, in batches of at most the model's
``max_batch_size`` and ``job_batch_tokens`` padded tokens (text), or of ``TABULAR_BATCH`` rows
(tabular, where a batch costs next to nothing).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import orjson
from sqlalchemy.orm import Session, sessionmaker

from app import poison
from app.db.engine import session_scope
from app.errors import InferqError
from app.jobs import store
from app.jobs.isolation import Probe, run_isolated
from app.jobs.lifecycle import end_job_if_complete
from app.jobs.lines import custom_ids, parse_chunk
from app.runtime.adapters import Adapter
from app.settings import Settings

log = logging.getLogger(__name__)

TABULAR_BATCH = 4096
MAX_ATTEMPTS = 5
"""A chunk whose worker died or raised this many times fails (each input with ``GAVE_UP``);
losses charged to one of its lines (``app.jobs.isolation``) do not count here."""
GAVE_UP = {
    "code": "chunk_failed",
    "message": f"gave up after {MAX_ATTEMPTS} attempts: the worker died or raised each time",
}
LOOP_BUDGET_S = 30.0
"""How long one message may go on taking further chunks of its job (see ``run_chunks``)."""

AdapterFor = Callable[[str, str], Adapter]
"""(model, version) -> the process's loaded adapter; raises ``UnknownModel``/``ModelNotReady``."""


@dataclass(slots=True)
class ChunkReport:
    """What running a job's chunks came to."""

    chunks: int = 0
    succeeded: int = 0
    failed: int = 0
    deliveries: list[str] = field(default_factory=list)


class LeaseLost(Exception):
    """Another worker took the chunk over: our lease ran out (the sweeper handed it on)."""


def run_chunks(
    *,
    sessions: sessionmaker[Session],
    settings: Settings,
    adapter_for: AdapterFor,
    job_id: str,
    seq: int,
    budget_s: float = LOOP_BUDGET_S,
) -> ChunkReport:
    """Run chunk ``seq`` of ``job_id`` if it is still to run, then the job's next queued chunks
    for up to ``budget_s``. Idempotent.

    Why go on past ``seq``: the broker hands a worker many messages at once, so one worker may
    hold most of a job's messages while another idles. Whoever runs takes the next chunk from
    the table, which spreads a job evenly; the messages left over find nothing to claim.
    """
    report = ChunkReport()
    end = time.monotonic() + budget_s
    target: int | None = seq
    while True:
        ran = run_chunk(
            sessions=sessions, settings=settings, adapter_for=adapter_for, job_id=job_id, seq=target
        )
        if ran is None and target is None:
            return report
        if ran is not None:
            report.chunks += 1
            report.succeeded += ran.succeeded
            report.failed += ran.failed
            report.deliveries += ran.deliveries
        if time.monotonic() > end:
            return report
        target = None


def run_chunk(
    *,
    sessions: sessionmaker[Session],
    settings: Settings,
    adapter_for: AdapterFor,
    job_id: str,
    seq: int | None,
) -> ChunkReport | None:
    """Run chunk ``seq`` (None: the first queued one never run) of ``job_id``; None when there
    was nothing to claim or the chunk was taken over meanwhile. A chunk whose earlier run was
    lost runs line by line (``app.jobs.isolation``), while this process runs no other suspect
    work (``app.poison.ISOLATION``)."""
    lease = timedelta(seconds=settings.lease_seconds)
    claim = _claim(sessions, job_id, seq, lease, "fresh")
    if claim is not None:
        return _run_claimed(sessions, settings, adapter_for, claim, lease)
    if seq is None or not _is_lost(sessions, job_id, seq):
        return None  # the usual case of a message whose chunk someone ran off the table
    with poison.ISOLATION:
        claim = _claim(sessions, job_id, seq, lease, "lost")
        return (
            None if claim is None else _run_claimed(sessions, settings, adapter_for, claim, lease)
        )


def _is_lost(sessions: sessionmaker[Session], job_id: str, seq: int) -> bool:
    with sessions() as s:
        return store.is_lost(session=s, job_id=job_id, seq=seq)


def _claim(
    sessions: sessionmaker[Session],
    job_id: str,
    seq: int | None,
    lease: timedelta,
    kind: store.ClaimKind,
) -> store.Claim | None:
    """Claim the chunk; after a lost run, charge that loss to the line it was running alone."""
    with session_scope(sessions) as s:
        claim = store.claim_chunk(session=s, job_id=job_id, seq=seq, lease=lease, kind=kind)
        if claim is not None and claim.attempt > 1:
            claim.probe = Probe.load(claim.probe).charged().dump()
            store.save_probe(session=s, claim=claim, probe=claim.probe, lease=lease)
    return claim


def _run_claimed(
    sessions: sessionmaker[Session],
    settings: Settings,
    adapter_for: AdapterFor,
    claim: store.Claim,
    lease: timedelta,
) -> ChunkReport | None:
    heartbeat = _Heartbeat(sessions, claim, lease)
    probe = Probe.load(claim.probe) if claim.attempt > 1 else None
    try:
        if probe is not None and claim.attempt - 1 - probe.explained >= MAX_ATTEMPTS:
            result = failed_chunk(claim, GAVE_UP)
        else:
            result = score_chunk(
                claim,
                adapter_for=adapter_for,
                settings=settings,
                beat=heartbeat,
                probe=probe,
                save=heartbeat.save,
            )
    except LeaseLost:
        log.warning(
            "chunk taken over; dropping its results", extra={"job": claim.job_id, "seq": claim.seq}
        )
        return None
    with session_scope(sessions) as s:
        job = store.finish_chunk(session=s, claim=claim, result=result)
        if job is None:
            return None
        deliveries = end_job_if_complete(s, job)
    return ChunkReport(1, result.succeeded, result.failed, deliveries)


class _Heartbeat:
    """Pushes the chunk's lease out while a long chunk runs; raises ``LeaseLost`` if it is gone."""

    def __init__(self, sessions: sessionmaker[Session], claim: store.Claim, lease: timedelta):
        self.sessions = sessions
        self.claim = claim
        self.lease = lease
        self.every = lease.total_seconds() / 3
        self.last = time.monotonic()

    def __call__(self) -> None:
        if time.monotonic() - self.last < self.every:
            return
        with session_scope(self.sessions) as s:
            ok = store.extend_lease(
                session=s,
                job_id=self.claim.job_id,
                seq=self.claim.seq,
                attempt=self.claim.attempt,
                lease=self.lease,
            )
        if not ok:
            raise LeaseLost()
        self.last = time.monotonic()

    def save(self, probe: Probe) -> None:
        """Store an isolated run's progress (which also pushes the lease out)."""
        with session_scope(self.sessions) as s:
            ok = store.save_probe(session=s, claim=self.claim, probe=probe.dump(), lease=self.lease)
        if not ok:
            raise LeaseLost()
        self.last = time.monotonic()


def score_chunk(
    claim: store.Claim,
    *,
    adapter_for: AdapterFor,
    settings: Settings,
    beat: Callable[[], None] = lambda: None,
    probe: Probe | None = None,
    save: Callable[[Probe], None] = lambda _: None,
) -> store.ChunkResult:
    """The chunk's result lines: ``{"index", "custom_id", "output"|"error"}`` in input order.
    With a ``probe`` (an earlier run was lost) lines run alone, ``save`` before each."""
    try:
        adapter = adapter_for(claim.model, claim.model_version)
    except InferqError as exc:
        return failed_chunk(claim, {"code": exc.code, "message": exc.message})
    manifest = adapter.entry.manifest
    parsed = parse_chunk(
        claim.lines,
        fmt=_fmt(claim),
        columns=claim.columns,
        manifest=manifest,
        max_text_chars=settings.max_text_chars,
    )
    valid = [i for i, inp in enumerate(parsed.inputs) if inp is not None]
    if manifest.kind == "tabular":
        batch, tokens = TABULAR_BATCH, None
    else:
        batch, tokens = manifest.batching.max_batch_size, settings.job_batch_tokens or None
    values = [parsed.inputs[i] for i in valid]
    if probe is None:
        outcomes = run_model(adapter, values, batch=batch, tokens=tokens, beat=beat)
    else:
        outcomes = run_isolated(
            adapter,
            valid,
            values,
            probe=probe,
            max_attempts=settings.max_attempts,
            run=lambda a, xs, b: run_model(a, xs, batch=b, tokens=tokens, beat=beat),
            batch=batch,
            save=save,
        )
    outputs: list[Any] = [None] * len(parsed.inputs)
    errors = parsed.errors
    for i, (out, err) in zip(valid, outcomes, strict=True):
        outputs[i] = out
        errors[i] = err
    lines = [
        _line(claim.start_index + i, cid, outputs[i], errors[i])
        for i, cid in enumerate(parsed.custom_ids)
    ]
    failed = sum(1 for e in errors if e is not None)
    return store.ChunkResult(b"\n".join(lines), len(lines) - failed, failed)


def failed_chunk(claim: store.Claim, error: dict[str, str]) -> store.ChunkResult:
    """Every input of the chunk failed with ``error`` (the model cannot run, or gave up)."""
    cids = custom_ids(claim.lines, fmt=_fmt(claim), columns=claim.columns)
    lines = [_line(claim.start_index + i, cid, None, error) for i, cid in enumerate(cids)]
    return store.ChunkResult(b"\n".join(lines), 0, len(lines))


Outcome = tuple[dict[str, Any] | None, dict[str, str] | None]


def run_model(
    adapter: Adapter,
    inputs: Sequence[Any],
    *,
    batch: int,
    tokens: int | None = None,
    beat: Callable[[], None] = lambda: None,
) -> list[Outcome]:
    """Run ``inputs`` sorted by length, in batches of at most ``batch`` inputs and (when given)
    ``tokens`` padded tokens; an input that breaks fails alone."""
    outcomes: list[Outcome] = [(None, None)] * len(inputs)
    prepared, runnable = _prepare(adapter, inputs, outcomes)
    lengths = [adapter.length(p) for p in prepared]
    runnable.sort(key=lambda k: lengths[k])
    for idx in _batches(runnable, lengths, batch=batch, tokens=tokens):
        beat()
        for k, out in zip(idx, _run_batch(adapter, [prepared[k] for k in idx]), strict=True):
            outcomes[k] = out
    return outcomes


def _batches(
    order: list[int], lengths: list[int], *, batch: int, tokens: int | None
) -> Iterator[list[int]]:
    """Cut ``order`` (shortest first) into batches; each batch pads to its last, longest input."""
    if tokens is None:
        for start in range(0, len(order), batch):
            yield order[start : start + batch]
        return
    current: list[int] = []
    for k in order:
        if current and (len(current) >= batch or (len(current) + 1) * lengths[k] > tokens):
            yield current
            current = []
        current.append(k)
    if current:
        yield current


def _prepare(
    adapter: Adapter, inputs: Sequence[Any], outcomes: list[Outcome]
) -> tuple[list[Any], list[int]]:
    """Tokenise / tensorise all at once; on failure one by one, so a bad input fails alone."""
    if not inputs:
        return [], []
    poison.crash_if_marked(inputs)  # test only, see ``app.poison``
    try:
        return list(adapter.prepare(inputs)), list(range(len(inputs)))
    except Exception:
        prepared: list[Any] = [None] * len(inputs)
        runnable = []
        for k, inp in enumerate(inputs):
            try:
                prepared[k] = adapter.prepare([inp])[0]
                runnable.append(k)
            except Exception as exc:
                outcomes[k] = (None, {"code": "invalid_input", "message": f"preprocessing: {exc}"})
        return prepared, runnable


def _run_batch(adapter: Adapter, prepared: list[Any]) -> list[Outcome]:
    try:
        outs = adapter.run(prepared)
        if len(outs) != len(prepared):
            raise RuntimeError(f"the model gave {len(outs)} outputs for {len(prepared)} inputs")
        return [(o, None) for o in outs]
    except Exception as exc:
        if len(prepared) == 1:
            return [(None, {"code": "inference_failed", "message": str(exc)[:500]})]
        log.warning("batch failed; running its inputs one by one", extra={"error": repr(exc)})
        return [_run_batch(adapter, [p])[0] for p in prepared]


def _line(
    index: int, cid: str | None, output: dict[str, Any] | None, error: dict[str, str] | None
) -> bytes:
    body: dict[str, Any] = {"index": index, "custom_id": cid}
    if error is not None:
        body["error"] = error
    else:
        body["output"] = output
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def _fmt(claim: store.Claim) -> Any:
    return "csv" if claim.input_format == "csv" else "jsonl"
