"""Response bodies as the OpenAPI document declares them (``*Public``).

Routes render their bodies themselves (``api.responses.JSON``, no per-request validation); these
models are the contract those bodies keep, and ``tests/api/test_openapi_contract.py`` checks that
they do. Fields a body leaves out when they have no value are optional here; nested objects whose
shape is the model's or the caller's own (outputs, sources, provenance) are plain objects.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

Obj = dict[str, Any]
PredictionStatus = Literal["queued", "running", "succeeded", "failed", "cancelled", "expired"]
JobState = Literal["queued", "running", "succeeded", "failed", "cancelled", "expired"]


class Public(BaseModel):
    """A response body: the fields listed are always there (or marked optional); a newer
    server may add more."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())


class Health(Public):
    status: Literal["ok"]


class Readiness(Public):
    status: Literal["ready", "not_ready"]
    checks: dict[str, str]


class ModelPublic(Public):
    name: str
    version: str
    kind: str
    input_schema: Obj
    output_schema: Obj
    max_batch_size: int
    max_delay_ms: float
    length_buckets: list[int] | None = None
    max_batch_tokens: int | None = None
    sha256: str
    labels: dict[str, list[str]] | None = None
    metrics: Obj | None = None
    versions: list[str]
    created_at: str | None = None


class ModelList(Public):
    models: list[ModelPublic]


class ErrorInfo(Public):
    code: str
    message: str


class PredictionAccepted(Public):
    id: str
    status: PredictionStatus
    model: str
    created_at: str


class PredictionsAccepted(Public):
    predictions: list[PredictionAccepted]


class PredictionPublic(Public):
    id: str
    status: PredictionStatus
    model: str
    model_version: str | None
    created_at: str
    output: Any = None
    error: ErrorInfo | None = None
    started_at: str | None = None
    completed_at: str | None = None
    batch_size: int | None = None
    priority: Literal["high", "normal", "low"] | None = None
    metadata: Obj | None = None
    job_id: str | None = None
    custom_id: str | None = None
    expires_at: str | None = None


class RequestCounts(Public):
    total: int
    succeeded: int
    failed: int
    cancelled: int | None = None


class JobPublic(Public):
    id: str
    object: Literal["job"]
    status: JobState
    model: str
    model_version: str | None
    request_counts: RequestCounts
    created_at: str
    expires_at: str | None = None
    error: ErrorInfo | None = None
    started_at: str | None = None
    completed_at: str | None = None
    schedule_id: str | None = None
    callback_url: str | None = None
    results_url: str | None = None
    provenance: Obj | None = None
    sink: Obj | None = None


class JobList(Public):
    jobs: list[JobPublic]


class SchedulePublic(Public):
    id: str
    name: str
    cron: str | None
    timezone: str
    model: str
    source: Obj
    enabled: bool
    next_run_at: str | None
    created_at: str
    updated_at: str | None
    model_version: str | None = None
    sink: Obj | None = None
    callback_url: str | None = None
    last_run_at: str | None = None
    watermark: Any = None


class ScheduleList(Public):
    schedules: list[SchedulePublic]


class RunPublic(Public):
    id: str
    schedule_id: str
    trigger: str
    status: str
    created_at: str
    scheduled_for: str | None = None
    file_path: str | None = None
    job_id: str | None = None
    error: Any = None
    provenance: Obj | None = None
    completed_at: str | None = None
    sink: Obj | None = None


class RunList(Public):
    runs: list[RunPublic]


class Deleted(Public):
    id: str
    deleted: Literal[True]


class IntegrationPublic(Public):
    id: str
    kind: str
    name: str
    enabled: bool
    source: str | None
    config: Obj
    secrets: dict[str, str]
    hook_path: str
    created_at: str | None
    updated_at: str | None
    activity: Obj


class IntegrationList(Public):
    integrations: list[IntegrationPublic]


class DeliveryPublic(Public):
    id: str
    kind: Literal["webhook", "integration"]
    status: Literal["pending", "delivered", "dead"]
    attempt_count: int
    created_at: str
    next_attempt_at: str | None
    delivered_at: str | None
    dead_reason: str | None
    last_error: str | None
    expires_at: str | None
    attempts: list[Obj] | None = None
    replayed: bool | None = None


class DeliveryList(Public):
    deliveries: list[DeliveryPublic]


class Usage(Public):
    tenant: str
    queued_or_running: int
    by_model: dict[str, int]
    limits: dict[str, float | None]


class HookAccepted(Public):
    ok: Literal[True]
    status: str
    event_id: str | None = None
    prediction_id: str | None = None


# OpenAI's objects (https://platform.openai.com/docs/api-reference): ids and times as it has them.


class Embedding(Public):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str


class EmbeddingList(Public):
    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: dict[str, int]


class FileObject(Public):
    id: str
    object: Literal["file"]
    bytes: int | None
    created_at: int | None
    expires_at: int | None
    filename: str
    purpose: str
    status: str
    status_details: str | None


class BatchObject(Public):
    id: str
    object: Literal["batch"]
    endpoint: str
    input_file_id: str
    completion_window: str
    status: str
    created_at: int | None
    request_counts: dict[str, int]


class BatchList(Public):
    object: Literal["list"]
    data: list[BatchObject]
    first_id: str | None
    last_id: str | None
    has_more: bool
