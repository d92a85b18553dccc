"""The files store: what ``POST /v1/files`` uploads, in Postgres, tenant by tenant.

A file is a ``files`` row and its content in ``file_parts`` of ``PART_BYTES`` each (see
``app.db.files``), written in one transaction from a spooled upload and read back part by part,
so memory stays flat whatever the file's size (bounded by ``max_file_bytes``). Files expire with
the tenant's retention of jobs (``app.retention``), or sooner if the upload asked.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import IO, Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session, sessionmaker

from app import retention
from app.db.base import utcnow
from app.db.engine import session_scope
from app.db.files import File, FilePart
from app.errors import InvalidInput, NotFound
from app.openai_compat.wire import unix
from app.settings import Settings

PART_BYTES = 1 << 20
PURPOSES = ("batch",)
"""What a tenant may upload for; ``batch_output`` files are made by batches."""
MAX_FILENAME = 255


def new_file_id() -> str:
    from uuid import uuid4

    return f"file-{uuid4().hex}"


def store_file(
    *,
    sessions: sessionmaker[Session],
    settings: Settings,
    tenant: str,
    purpose: str,
    filename: str,
    content: IO[bytes],
    ttl_s: float | None = None,
) -> File:
    """Store ``content`` (read from its start) as a new file of ``tenant``.

    Raises ``InvalidInput`` for a purpose other than ``batch`` or an empty file.
    """
    if purpose not in PURPOSES:
        raise InvalidInput(
            f"purpose must be 'batch', got {purpose!r}: inferq's files are the input of the "
            "Batch API"
        )
    now = utcnow()
    f = File(
        id=new_file_id(),
        tenant=tenant,
        purpose=purpose,
        filename=(filename or "upload.jsonl")[:MAX_FILENAME],
        created_at=now,
        expires_at=retention.expires_at(settings, retention.Kind.jobs, tenant, now, ttl_s),
    )
    size = lines = 0
    last = b"\n"
    with session_scope(sessions) as s:
        s.add(f)
        s.flush()
        seq = 0
        while block := content.read(PART_BYTES):
            s.execute(insert(FilePart).values(file_id=f.id, seq=seq, data=block))
            seq += 1
            size += len(block)
            lines += block.count(b"\n")
            last = block[-1:]
        if size == 0:
            raise InvalidInput("the file is empty", code="empty_input")
        f.bytes = size
        f.lines = lines + (last != b"\n")
    return f


def add_rendered(
    *,
    session: Session,
    file_id: str,
    tenant: str,
    batch_id: str,
    filename: str,
    lines: int,
    expires_at: datetime,
) -> None:
    """Record a batch's output or error file (its content is rendered from the batch)."""
    session.add(
        File(
            id=file_id,
            tenant=tenant,
            purpose="batch_output",
            filename=filename,
            lines=lines,
            batch_id=batch_id,
            created_at=utcnow(),
            expires_at=expires_at,
        )
    )


def get_file(*, session: Session, tenant: str, file_id: str) -> File:
    """The tenant's file; ``NotFound`` for an unknown id, another tenant's or an expired one."""
    f = session.get(File, file_id)
    if f is None or f.tenant != tenant or f.expires_at <= utcnow():
        raise NotFound(f"No such File object: {file_id}", code="file_not_found")
    return f


def read_parts(sessions: sessionmaker[Session], file_id: str) -> Iterator[bytes]:
    """The content of an uploaded file, part by part (a server-side cursor)."""
    stmt = (
        select(FilePart.data)
        .where(FilePart.file_id == file_id)
        .order_by(FilePart.seq)
        .execution_options(yield_per=2)
    )
    with sessions() as s:
        for (data,) in s.execute(stmt):
            yield bytes(data)


def lines_of(blocks: Iterable[bytes]) -> Iterator[bytes]:
    """The lines of a stream of blocks cut anywhere (without their ``\\n``; blank ones too)."""
    carry = b""
    for block in blocks:
        parts = (carry + block).split(b"\n")
        carry = parts.pop()
        yield from parts
    if carry:
        yield carry


def file_public(f: File) -> dict[str, Any]:
    """OpenAI's file object."""
    return {
        "id": f.id,
        "object": "file",
        "bytes": f.bytes,
        "created_at": unix(f.created_at),
        "expires_at": unix(f.expires_at),
        "filename": f.filename,
        "purpose": f.purpose,
        "status": "processed",
        "status_details": None,
    }
