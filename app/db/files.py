"""Tables of the files store (``POST /v1/files``): a file's record and its content in parts.

A file's bytes are kept as ``file_parts`` rows of about a mebibyte each, so neither an upload nor
a download holds a whole file in memory, and a file of any allowed size stays far below what one
Postgres value may hold. Output and error files of a batch have no parts: they are rendered from
the batch's job when read (``batch_id`` says which batch; ``app.openai_compat.batch_render``).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, UTCDateTime, default_expiry, utcnow


class File(Base):
    """One stored file of a tenant (OpenAI's file object)."""

    __tablename__ = "files"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(100))
    purpose: Mapped[str] = mapped_column(String(32))
    """``batch`` (an upload), or ``batch_output`` (a batch's output or error file)."""
    filename: Mapped[str] = mapped_column(String(255))
    bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    """The size; for a batch's output file None until it was first rendered."""
    lines: Mapped[int] = mapped_column(Integer, default=0)
    batch_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    """Set on a batch's output and error files, whose content is rendered from the batch."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, default=default_expiry, index=True)
    """When it is deleted (``app.retention``, the jobs' retention unless the upload asked less)."""

    __table_args__ = (Index("ix_files_tenant_created", "tenant", "created_at"),)


class FilePart(Base):
    """About a mebibyte of a file's content; ``seq`` orders them."""

    __tablename__ = "file_parts"

    file_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("files.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)
