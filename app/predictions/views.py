"""Public representations of stored objects (the GET body, which is also the webhook body)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from app.db.models import Prediction


def iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


def prediction_public(p: Prediction | Any) -> dict[str, Any]:
    """The body of ``GET /v1/predictions/{id}``; absent fields are left out, not null.

    ``p`` is a ``Prediction`` or a row with the same attribute names.
    """
    body: dict[str, Any] = {
        "id": p.id,
        "status": p.status,
        "model": p.model,
        "model_version": p.model_version,
        "created_at": iso(p.created_at),
    }
    if p.output is not None:
        body["output"] = p.output
    if p.error_code is not None:
        body["error"] = {"code": p.error_code, "message": p.error_message or ""}
    optional = {
        "started_at": iso(p.started_at),
        "completed_at": iso(p.completed_at),
        "batch_size": p.batch_size,
        "priority": {0: "high", 1: "normal", 2: "low"}.get(p.priority, "normal"),
        "metadata": p.metadata_,
        "job_id": p.job_id,
        "custom_id": p.custom_id,
        "expires_at": iso(p.expires_at),
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    return body
