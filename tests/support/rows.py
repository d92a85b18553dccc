"""Queued prediction rows stored straight into the database (tests of the store and workers)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from app.db import predictions as crud
from app.db.base import new_id, utcnow


def add_queued(
    sessions: sessionmaker[Session], model: str, inputs: list[Any], **columns: Any
) -> list[str]:
    """Store one queued prediction of ``model`` per input (``columns`` override any column);
    return their ids in order."""
    now = utcnow()
    rows = [
        {
            "id": new_id("pred"),
            "tenant": "t",
            "model": model,
            "model_version": "1",
            "status": "queued",
            "priority": 1,
            "input": inp,
            "created_at": now,
            "published_at": now,
            "attempts": 0,
            **columns,
        }
        for inp in inputs
    ]
    with sessions.begin() as s:
        crud.insert_predictions(session=s, rows=rows)
    return [r["id"] for r in rows]
