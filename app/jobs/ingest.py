"""Taking a job in: a stream of bytes becomes stored, published chunks, with flat memory.

``JobWriter`` is fed blocks of the upload as they arrive; each chunk is committed and published
(one message per chunk) as soon as it is full, so workers start on a big file while it is still
uploading. The job ends only once it is sealed (every chunk stored), so an early chunk finishing
cannot end it.

The last full chunk's worth of lines is held back until the input ends, then cut with the rest
into chunks ``job_tail_split`` times smaller: the job's end is spread over small pieces, so one
worker is not left running a whole chunk alone while the others have nothing to take.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from sqlalchemy import delete, text, update
from sqlalchemy.orm import Session, sessionmaker

from app import __version__, retention
from app.db.base import new_id, utcnow
from app.db.engine import session_scope
from app.db.jobs import ChunkStatus, Job, JobChunk, JobStatus
from app.errors import InvalidInput, PayloadTooLarge
from app.jobs import lines as L
from app.jobs import store
from app.jobs.lifecycle import end_job_if_complete
from app.predictions.admission import Admission
from app.registry import ModelEntry
from app.settings import Settings

log = logging.getLogger(__name__)

TABULAR_CHUNK = 4096
TEXT_CHUNK_BATCHES = 32
"""Text chunks of 32 full batches (1,024 texts for minilm-embed): sorted by length over more texts,
they pad less; measured: worker CPU per text 5.37-5.47 ms against 5.54-5.61 with 8 batches
(`python -m bench --model minilm-embed --scenarios raw,bulk --set job_chunk_lines=1024`)."""


@runtime_checkable
class JobPublisher(Protocol):
    """Puts one message per chunk of a job on the model's queue."""

    def publish_job_chunk(self, model: str, job_id: str, seq: int) -> None: ...


def chunk_lines(settings: Settings, entry: ModelEntry) -> int:
    """Records per chunk: big for tabular models (cheap rows), a few full batches for text."""
    if settings.job_chunk_lines > 0:
        return settings.job_chunk_lines
    if entry.manifest.kind == "tabular":
        return TABULAR_CHUNK
    return entry.manifest.batching.max_batch_size * TEXT_CHUNK_BATCHES


class JobWriter:
    """Feeds a job's input into chunks. ``feed`` blocks, then ``finish`` (or ``abort``)."""

    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        publisher: JobPublisher,
        settings: Settings,
        entry: ModelEntry,
        tenant: str,
        fmt: L.InputFormat,
        filename: str | None = None,
        callback_url: str | None = None,
        schedule_id: str | None = None,
        sink: dict[str, Any] | None = None,
        max_bytes: int | None = None,
        check_first: bool = True,
        ttl_s: float | None = None,
    ) -> None:
        self.sessions = sessions
        self.ttl_s = ttl_s
        self.check_first = check_first
        self.publisher = publisher
        self.settings = settings
        self.entry = entry
        self.fmt = fmt
        self.filename = filename
        self.max_bytes = max_bytes
        self.chunk_lines = chunk_lines(settings, entry)
        self.splitter = L.RecordSplitter(fmt)
        self.sha = hashlib.sha256()
        self.bytes = 0
        self.total = 0
        self.seq = 0
        self.columns: list[str] | None = None
        self._pending: list[bytes] = []
        self._ready: list[dict[str, Any]] = []
        m = entry.manifest
        created = utcnow()
        self.job = Job(
            id=new_id("job"),
            tenant=tenant,
            model=m.name,
            model_version=m.version,
            status=JobStatus.queued.value,
            input_format=fmt,
            callback_url=callback_url,
            schedule_id=schedule_id,
            sink=sink,
            created_at=created,
            updated_at=created,
            # the job, its chunks and its results go together (``app.purge``)
            expires_at=retention.expires_at(settings, retention.Kind.jobs, tenant, created, ttl_s),
        )
        self._stored = False
        self._broker_down = False
        self.admission = Admission(settings)

    @property
    def job_id(self) -> str:
        return self.job.id

    def feed(self, data: bytes) -> None:
        """Take the next block of the input (any size, cut anywhere)."""
        self.bytes += len(data)
        if self.max_bytes is not None and self.bytes > self.max_bytes:
            raise PayloadTooLarge(f"the file is over the limit of {self.max_bytes} bytes")
        self.sha.update(data)
        self._take(self.splitter.feed(data))
        if self._ready:
            self._flush()

    def _take(self, records: list[bytes]) -> None:
        if not records:
            return
        if self.columns is None and self.fmt == "csv":
            self.columns = L.parse_header(records[0])
            L.csv_plan(self.columns, self.entry.manifest)
            records = records[1:]
        elif self.check_first and self.fmt == "jsonl" and self.total == 0 and not self._pending:
            L.check_first_line(records[0], self.filename)
        self._pending.extend(records)
        n = self.chunk_lines
        while len(self._pending) >= 2 * n:  # one chunk's worth stays for the tail
            self._cut(self._pending[:n])
            del self._pending[:n]

    def _cut_tail(self) -> None:
        """The input has ended: what is pending (less than two chunks) goes in small chunks."""
        size = max(1, self.chunk_lines // max(1, self.settings.job_tail_split))
        for start in range(0, len(self._pending), size):
            self._cut(self._pending[start : start + size])
        self._pending = []

    def _cut(self, records: list[bytes]) -> None:
        blob = b"\n".join(records)
        self._ready.append(
            {
                "job_id": self.job.id,
                "seq": self.seq,
                "start_index": self.total,
                "n_lines": len(records),
                "status": ChunkStatus.queued.value,
                "lines": blob,
                "attempts": 0,
                "succeeded": 0,
                "failed": 0,
            }
        )
        self.seq += 1
        self.total += len(records)
        too_big = self.admission.too_big(self.job.tenant, self.job.model, self.total)
        if too_big is not None:  # refused at once: the caller aborts what was stored
            raise too_big

    def _store_job(self, s: Session) -> None:
        """Insert the job row on the first write; later, mark it alive (see ``sweep``)."""
        if not self._stored:
            self.job.columns = self.columns
            s.add(self.job)
            s.flush()
            self._stored = True
        else:
            s.execute(update(Job).where(Job.id == self.job.id).values(updated_at=utcnow()))

    def _take_ready(self, s: Session) -> list[int]:
        """Insert the chunks cut so far; those the broker will not get are left unpublished."""
        published = None if self._broker_down else utcnow()
        rows, self._ready = self._ready, []
        for r in rows:
            r["published_at"] = published
        store.insert_chunks(session=s, rows=rows)
        return [] if self._broker_down else [r["seq"] for r in rows]

    def _flush(self) -> None:
        """Store and publish the chunks cut so far, so workers start while the upload goes on.

        These commits need not wait for the disk: nothing is promised to the caller before
        ``finish``, whose (synchronous) commit makes everything before it durable too.
        """
        with session_scope(self.sessions) as s:
            if s.get_bind().dialect.name == "postgresql":
                s.execute(text("SET LOCAL synchronous_commit = off"))
            self._store_job(s)
            seqs = self._take_ready(s)
        self._publish(seqs)

    def _publish(self, seqs: Sequence[int]) -> None:
        for i, seq in enumerate(seqs):
            try:
                self.publisher.publish_job_chunk(self.job.model, self.job.id, seq)
            except Exception as exc:
                self._broker_down = True  # the rest of this job waits for the sweeper
                log.warning(
                    "publish failed; the sweeper will publish again",
                    extra={"job": self.job.id, "chunks": len(seqs) - i, "error": repr(exc)},
                )
                try:
                    with session_scope(self.sessions) as s:
                        store.mark_published(
                            session=s, job_id=self.job.id, seqs=seqs[i:], when=None
                        )
                except Exception:
                    log.exception("could not mark unpublished chunks")
                return

    def finish(self, source: dict[str, Any], provenance: dict[str, Any] | None = None) -> Job:
        """Store the last chunks and seal the job; ``InvalidInput`` when there was no input."""
        self._take(self.splitter.end())
        self._cut_tail()
        if self.total == 0:
            what = "only a header" if self.columns is not None else "no input lines"
            raise InvalidInput(f"{self.filename or 'the input'} has {what}", code="empty_input")
        source = {**source, "format": self.fmt, "lines": self.total, "bytes": self.bytes}
        if self.filename is not None or source.get("type") == "upload":
            source["sha256"] = self.sha.hexdigest()
        record = self._provenance(source, provenance)
        with session_scope(self.sessions) as s:
            # the job's lines count against the same bounds as predictions: over one, this
            # transaction stores nothing and the caller aborts the chunks stored so far
            self.admission.admit_lines(s, self.job.tenant, self.job.model, self.total)
            self._store_job(s)
            seqs = self._take_ready(s)
            job = store.seal(
                session=s,
                job_id=self.job.id,
                total=self.total,
                chunks=self.seq,
                provenance=record,
            )
            # every chunk may have run before the seal: then it ends here (the sweeper sends
            # its webhook, this process has no dispatcher)
            end_job_if_complete(s, job)
        self._publish(seqs)
        log.info(
            "job accepted",
            extra={"job": job.id, "model": job.model, "lines": self.total, "chunks": self.seq},
        )
        return job

    def _provenance(self, source: dict[str, Any], extra: dict[str, Any] | None) -> dict[str, Any]:
        m = self.entry.manifest
        base: dict[str, Any] = {
            "model": {"name": m.name, "version": m.version, "sha256": m.sha256},
            "inferq_version": __version__,
            "source": source,
            "parameters": {
                "chunk_lines": self.chunk_lines,
                "batch_tokens": self.settings.job_batch_tokens,
                "max_text_chars": self.settings.max_text_chars,
            },
        }
        extra = dict(extra or {})
        if isinstance(extra.get("source"), dict):
            extra["source"] = {**source, **extra["source"]}
        return {**base, **extra}

    def abort(self, attempts: int = 5) -> None:
        """Drop whatever was stored of a job whose input failed half-way.

        Workers may be scoring its first chunks meanwhile; they lock a chunk, then the job. The
        chunks go first here too (the same order: no deadlock), and a transient error is retried,
        so a dropped upload does not wait for the sweeper's ``ABANDONED_UPLOAD_SECONDS``.
        """
        if not self._stored:
            return
        for attempt in range(1, attempts + 1):
            try:
                with session_scope(self.sessions) as s:
                    s.execute(delete(JobChunk).where(JobChunk.job_id == self.job.id))
                    s.execute(delete(Job).where(Job.id == self.job.id))
                return
            except Exception:
                if attempt == attempts:
                    log.exception("could not drop an aborted job", extra={"job": self.job.id})
                    return
                log.warning("dropping an aborted job failed; again", extra={"job": self.job.id})
                time.sleep(0.1 * attempt)
