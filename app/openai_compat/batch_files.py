"""Reading files: an upload's stored parts, or a batch's output or error file rendered from the
batch (``batch_render``) at each read, in input order, without holding it in memory."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from app.db.batches import Batch
from app.db.engine import session_scope
from app.db.files import File
from app.errors import NotFound
from app.openai_compat import batch_life, batch_render, files
from app.registry import Registry


def _rendered(
    sessions: sessionmaker[Session], registry: Registry, f: File, batch: Batch
) -> Iterator[bytes]:
    which: batch_render.Which = "output" if batch.output_file_id == f.id else "error"
    outcomes = batch_life.outcomes(sessions, registry, batch, batch.status)
    return batch_render.render(outcomes, batch_id=batch.id, model=batch.model or "", which=which)


def _open(
    s: Session, sessions: sessionmaker[Session], registry: Registry, tenant: str, file_id: str
) -> tuple[File, Iterator[bytes]]:
    f = files.get_file(session=s, tenant=tenant, file_id=file_id)
    if f.batch_id is None:
        return f, files.read_parts(sessions, f.id)
    batch = s.get(Batch, f.batch_id)
    if batch is None:  # purged before its files
        raise NotFound(f"No such File object: {file_id}", code="file_not_found")
    return f, _rendered(sessions, registry, f, batch)


def open_content(
    *, sessions: sessionmaker[Session], registry: Registry, tenant: str, file_id: str
) -> tuple[dict[str, Any], Iterator[bytes]]:
    """The file object and its content as a stream of blocks; ``NotFound`` for a file the
    tenant may not see. Raises before the first block."""
    with session_scope(sessions) as s:
        f, blocks = _open(s, sessions, registry, tenant, file_id)
        return files.file_public(f), blocks


def file_view(
    *, sessions: sessionmaker[Session], registry: Registry, tenant: str, file_id: str
) -> dict[str, Any]:
    """The file object. A batch's output file is measured the first time it is asked for
    (rendered once, its size kept)."""
    with session_scope(sessions) as s:
        f, blocks = _open(s, sessions, registry, tenant, file_id)
        if f.bytes is not None:
            return files.file_public(f)
    size = sum(len(b) for b in blocks)
    with session_scope(sessions) as s:
        s.execute(update(File).where(File.id == file_id).values(bytes=size))
        f = files.get_file(session=s, tenant=tenant, file_id=file_id)
        return files.file_public(f)
