"""Declarative base and column types shared by every table."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import JSON, DateTime, MetaData, TypeDecorator
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase

from app import clock

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

JSONType = JSON().with_variant(JSONB(), "postgresql")


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime, on SQLite too (which stores naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value  # type: ignore[no-any-return]


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def utcnow() -> datetime:
    """Now, on the database's clock (``app.clock``): what every stored instant is stamped with."""
    return clock.now()


def default_expiry(context: Any) -> datetime:
    """``expires_at`` of a row stored without one: its ``created_at`` plus the default
    retention (the insert paths of the API set the tenant's own; see ``app.retention``)."""
    from app.retention import DEFAULT_RETENTION_S

    created = context.get_current_parameters().get("created_at") if context else None
    return (created or utcnow()) + timedelta(seconds=DEFAULT_RETENTION_S)


def new_id(prefix: str) -> str:
    """A sortable-enough unique id with a readable prefix, e.g. ``pred_3f2c…``."""
    return f"{prefix}_{uuid.uuid4().hex}"
