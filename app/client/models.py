"""What the client returns: typed views of the API's objects, and its one error.

Each object keeps the answer it was read from in ``raw`` (fields this client does not know yet
are there), and parses timestamps into aware ``datetime`` objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

PREDICTION_FINAL = frozenset({"succeeded", "failed", "cancelled", "expired"})
JOB_FINAL = frozenset({"succeeded", "failed", "cancelled"})


def _when(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else None


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """Why something failed: a machine-readable ``code`` and a sentence."""

    code: str
    message: str

    @classmethod
    def of(cls, value: Any) -> ErrorInfo | None:
        if not isinstance(value, dict):
            return None
        return cls(str(value.get("code", "")), str(value.get("message", "")))


class ApiError(Exception):
    """A non-2xx answer (after any retries): its status, the API's error code and message."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        body: Any = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.body = body
        self.retry_after = retry_after
        """Seconds the server asked to wait (429/503), if it said."""


@dataclass(frozen=True, slots=True)
class Prediction:
    """One prediction: ``GET /v1/predictions/{id}`` (or what a submission returned)."""

    id: str
    status: str
    model: str | None = None
    model_version: str | None = None
    output: dict[str, Any] | None = None
    error: ErrorInfo | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    batch_size: int | None = None
    metadata: dict[str, Any] | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_final(self) -> bool:
        return self.status in PREDICTION_FINAL

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Prediction:
        return cls(
            id=d["id"],
            status=d["status"],
            model=d.get("model"),
            model_version=d.get("model_version"),
            output=d.get("output"),
            error=ErrorInfo.of(d.get("error")),
            created_at=_when(d.get("created_at")),
            started_at=_when(d.get("started_at")),
            completed_at=_when(d.get("completed_at")),
            batch_size=d.get("batch_size"),
            metadata=d.get("metadata"),
            raw=d,
        )


@dataclass(frozen=True, slots=True)
class RequestCounts:
    total: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0

    @property
    def done(self) -> int:
        return self.succeeded + self.failed + self.cancelled


@dataclass(frozen=True, slots=True)
class Job:
    """One bulk job: ``GET /v1/jobs/{id}``."""

    id: str
    status: str
    model: str | None = None
    model_version: str | None = None
    request_counts: RequestCounts = field(default_factory=RequestCounts)
    created_at: datetime | None = None
    completed_at: datetime | None = None
    schedule_id: str | None = None
    error: ErrorInfo | None = None
    provenance: dict[str, Any] | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_final(self) -> bool:
        return self.status in JOB_FINAL

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Job:
        counts = d.get("request_counts") or {}
        return cls(
            id=d["id"],
            status=d["status"],
            model=d.get("model"),
            model_version=d.get("model_version"),
            request_counts=RequestCounts(
                **{k: int(counts.get(k, 0)) for k in ("total", "succeeded", "failed", "cancelled")}
            ),
            created_at=_when(d.get("created_at")),
            completed_at=_when(d.get("completed_at")),
            schedule_id=d.get("schedule_id"),
            error=ErrorInfo.of(d.get("error")),
            provenance=d.get("provenance"),
            raw=d,
        )


@dataclass(frozen=True, slots=True)
class JobResult:
    """One line of a job's results: the input's place, its ``custom_id``, output or error."""

    index: int
    custom_id: str | None
    output: dict[str, Any] | None
    error: ErrorInfo | None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> JobResult:
        return cls(
            int(d.get("index", -1)),
            d.get("custom_id"),
            d.get("output"),
            ErrorInfo.of(d.get("error")),
        )


@dataclass(frozen=True, slots=True)
class Schedule:
    """One schedule: ``GET /v1/schedules/{id}``."""

    id: str
    name: str
    model: str
    enabled: bool
    cron: str | None = None
    timezone: str = "UTC"
    source: dict[str, Any] = field(default_factory=dict)
    next_run_at: datetime | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Schedule:
        return cls(
            id=d["id"],
            name=d["name"],
            model=d["model"],
            enabled=bool(d.get("enabled", True)),
            cron=d.get("cron"),
            timezone=d.get("timezone", "UTC"),
            source=d.get("source") or {},
            next_run_at=_when(d.get("next_run_at")),
            raw=d,
        )


@dataclass(frozen=True, slots=True)
class ScheduleRun:
    """One run of a schedule: what triggered it, its status and the job it made."""

    id: str
    status: str
    job_id: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScheduleRun:
        return cls(id=d["id"], status=d["status"], job_id=d.get("job_id"), raw=d)
