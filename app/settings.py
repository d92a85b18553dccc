"""All configuration, read from ``INFERQ_*`` environment variables."""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.retention import check_tenant_retention

DEV_WEBHOOK_SECRET = "inferq-dev-secret"
VAR_DIR = Path(os.environ.get("INFERQ_VAR_DIR", "var"))


class Settings(BaseSettings):
    """inferq's settings. Every field maps to ``INFERQ_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="INFERQ_", extra="ignore")

    env: str = "development"
    """``development`` allows built-in default secrets; anything else refuses them."""

    database_url: str = f"sqlite:///{VAR_DIR / 'inferq.db'}"
    """SQLAlchemy URL of the results store. Postgres in production; a SQLite file by default."""

    broker_url: str = f"filesystem://{VAR_DIR / 'broker'}"
    """Celery broker: ``redis://``, ``amqp://`` or (default, no server) ``filesystem://<dir>``."""

    queue_prefix: str = "inferq"
    """Queue names are ``<prefix>.<model>``, ``<prefix>.maintenance``; change it to share a broker."""

    webhook_secret: str = DEV_WEBHOOK_SECRET
    """HMAC-SHA256 key that signs outgoing webhooks (``X-Inferq-Signature``)."""

    models_dir: Path = VAR_DIR / "models"
    """Where ``inferq models build`` writes models and where workers load them from."""

    models_source: Path | None = None
    """A shared folder of models (the same layout as ``models_dir``: an NFS or object-store
    mount, or where ``inferq models build`` wrote). A worker asked for a version it lacks copies
    it from here (sha256-checked) without a restart; ``inferq models pull`` does it by hand."""

    model_wait_seconds: float = Field(300.0, ge=0)
    """How long a request pinned to a model version no worker has yet may wait for one that has
    it (a worker without it puts the request back) before it fails ``unknown_model``."""

    api_keys: dict[str, str] = Field(default_factory=dict)
    """JSON object ``{"<api key>": "<tenant>"}``. Empty: auth off, everything is tenant ``default``."""

    data_connections: dict[str, dict[str, str]] = Field(default_factory=dict)
    """JSON object ``{"<tenant>": {"<name>": "<SQLAlchemy URL>"}}`` (``"*"``: every tenant): the
    databases a tenant's SQL sources and table sinks may name (``"connection": "<name>"``).
    With API keys on they are the only ones, and inferq's own database (however spelt) is
    refused even if registered. See docs/data-sources.md."""

    data_roots: dict[str, list[Path]] = Field(default_factory=dict)
    """JSON object ``{"<tenant>": ["<folder>", ...]}`` (``"*"``: every tenant): the folders a
    tenant's file sources and file sinks may use. With API keys on a tenant without an entry
    may use none; with them off and no entry, ``INFERQ_SOURCE_ROOTS`` applies."""

    max_body_bytes: int = 1_000_000
    """Largest JSON body ``/v1`` accepts (413 above)."""

    max_text_chars: int = 10_000
    """Longest text input accepted by text models (422 above)."""

    max_inputs_per_request: int = 256
    """Most ``inputs`` in one ``POST /v1/predictions``."""

    max_queued_per_tenant: int = 2_000_000
    """Most inputs one tenant may have queued or running (predictions and job lines); over it a
    submission is refused whole with 429 and ``Retry-After``. 0: no bound."""

    max_queued_per_model: int = 5_000_000
    """Most inputs queued or running for one model, all tenants together. 0: no bound."""

    tenant_rate: float = 0.0
    """Inputs per second one tenant may submit (a token bucket over all its API keys' requests).
    0: no rate bound."""

    tenant_burst: float = 0.0
    """The bucket's size: inputs a tenant may submit at once after a quiet spell (at least the
    largest request; 0 with a rate: the rate, i.e. one second's worth)."""

    tenant_limits: dict[str, dict[str, float]] = Field(default_factory=dict)
    """JSON object ``{"<tenant>": {"max_queued": N, "rate": R, "burst": B}}``: a tenant's own
    bounds over the defaults above (a key left out keeps the default)."""

    max_job_upload_bytes: int = 4 << 30
    """Largest file a ``POST /v1/jobs`` upload may stream in (413 above); inline ``inputs``
    stay under ``max_body_bytes``."""

    openai_timeout_seconds: float = Field(30.0, gt=0, le=600)
    """How long ``POST /v1/embeddings`` waits for its predictions before it answers 504
    (``timeout``); they go on and are kept, so a retry with the same ``Idempotency-Key``
    gets them."""

    max_file_bytes: int = Field(200 << 20, ge=1)
    """Largest file a ``POST /v1/files`` upload may hold (413 above)."""

    batch_window_seconds: float = Field(86_400.0, gt=0)
    """What a batch's ``completion_window`` of ``"24h"`` means here: what has not run that long
    after ``POST /v1/batches`` ends ``expired``. Tests shorten it."""

    batch_max_requests: int = Field(50_000, ge=1)
    """Most request lines in one ``POST /v1/batches`` input file (400 above)."""

    job_chunk_lines: int = 0
    """Inputs per chunk of a bulk job; 0: 4096 for tabular models, 32 model batches for text."""

    job_tail_split: int = 4
    """The end of a job's input (its last chunk's worth of lines and the rest) goes out in
    chunks this many times smaller, so workers finish the job together (1: chunks all the same
    size)."""

    job_batch_tokens: int = 512
    """Padded tokens per model batch of a bulk job's text (0: only ``max_batch_size`` counts).
    On CPU a batch whose activations fit the cache runs faster than a bigger one; raise it on
    a GPU."""

    lease_seconds: float = 60.0
    """How long a worker owns a running request before the sweeper hands it to another."""

    requeue_after_seconds: float = 120.0
    """A request still queued this long after its publish is published again by the sweeper."""

    db_session_timeout_seconds: float = Field(10.0, ge=1)
    """How long a Postgres session may sit idle inside a transaction, or go unanswered on the
    network, before it is ended on both sides (``app.db.engine.session_bounds``): its locks are
    freed for the sweeper well within a lease. Keep it under ``lease_seconds``."""

    broker_watch_seconds: float = Field(1.0, ge=0)
    """How often each worker process checks that the broker still holds its messages (a marker
    message on ``<prefix>.broker-epoch``; also at once when its consumer reconnects). When the
    marker is gone (a broker restarted without keeping its messages) everything queued is
    published again at once, not after ``requeue_after_seconds``. 0: off."""

    sweep_interval_seconds: float = 10.0
    """How often beat runs the sweeper."""

    max_attempts: int = Field(3, ge=1)
    """How often the worker running a request or a job line may be lost (its lease ran out)
    before the input is taken to crash workers: it then ends ``failed`` with ``worker_lost``
    and is not run again. After a first loss work runs alone, so only the poison counts up."""

    retention_predictions_seconds: float = Field(7 * 86_400.0, gt=0)
    """How long a prediction (its input and output) is kept after it was created; then reads
    answer 404 and the purge deletes it. A live one is kept until it is final."""

    retention_jobs_seconds: float = Field(7 * 86_400.0, gt=0)
    """How long a bulk job, its chunks and its results are kept after it was created."""

    retention_deliveries_seconds: float = Field(7 * 86_400.0, gt=0)
    """How long a delivery (webhook or write-back) and its attempts are kept after it became
    final (delivered or dead); a pending one is never purged."""

    retention_events_seconds: float = Field(7 * 86_400.0, gt=0)
    """How long an integration event (an inbound update or ticket) is kept after it arrived
    (and at least as long as a delivery that answers it)."""

    max_ttl_seconds: float = Field(30 * 86_400.0, gt=0)
    """The longest ``ttl_s`` a ``POST /v1/predictions`` or ``POST /v1/jobs`` may ask for (422
    ``ttl_too_long`` above)."""

    tenant_retention: dict[str, dict[str, float]] = Field(default_factory=dict)
    """JSON object ``{"<tenant>": {"predictions": s, "jobs": s, "deliveries": s, "events": s,
    "max_ttl": s}}``: a tenant's own retention (seconds) over the defaults above; a key left
    out keeps the default. Kept apart from ``INFERQ_TENANT_LIMITS``."""

    purge_interval_seconds: float = Field(300.0, gt=0)
    """How often beat runs the purge of expired objects."""

    purge_batch_rows: int = Field(1000, ge=1)
    """Rows one purge statement deletes at most (a short transaction each; job chunks, which
    hold the results, go a tenth of that at a time)."""

    purge_budget_seconds: float = Field(120.0, gt=0)
    """How long one purge run may go on; what is left waits for the next run."""

    webhook_timeout_seconds: float = 5.0
    """Timeout of one webhook delivery attempt."""

    webhook_max_attempts: int = 8
    """Attempts before a webhook delivery is given up (backoff doubles from 1 s, capped at 5 min)."""

    webhook_backoff_base_seconds: float = 1.0
    """First retry delay; each further one doubles."""

    egress_allow: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Internal hosts and networks outbound requests may reach after all, comma-separated or a
    JSON list (``127.0.0.1/32,receiver.test,10.0.0.0/8,[::1]``). Empty: public addresses only."""

    egress_resolve: dict[str, str] = Field(default_factory=dict)
    """JSON object ``{"<host name>": "<address>"}``: fixed answers for these names instead of DNS
    (as curl's ``--resolve``), e.g. to pin a partner's host. The address is checked by the
    egress policy like any DNS answer."""

    intra_op_threads: int = 1
    """ONNX Runtime intra-op threads per session. One per core-sized worker process."""

    runner_threads: int = 0
    """Threads running model batches per worker process (0: number of cores)."""

    writer_threads: int = 2
    """Threads per model writing batch results, so the model never waits on the database."""

    count_queue_wait: bool = True
    """A request's time between being accepted and reaching a worker's batcher counts against
    its model's ``max_delay_ms`` (under light load it does not wait a second time; the API's and
    the workers' clocks are taken to agree, a negative wait counts as none)."""

    providers: list[str] = Field(default_factory=list)
    """ONNX Runtime providers in order; empty: CUDA when available, else CPU."""

    worker_concurrency: int = 32
    """Celery thread-pool size per worker process: messages in flight that feed the batcher."""

    log_level: str = "INFO"
    """Log level of API, workers and CLI (logs are JSON lines)."""

    log_json: bool = True
    """JSON log lines (set false for human-readable console logs)."""

    otel_exporter: str = ""
    """Where OpenTelemetry spans go: ``console``, ``otlp`` (``OTEL_EXPORTER_OTLP_*`` say where)
    or ``none``; empty: ``OTEL_TRACES_EXPORTER``, else none. Needs ``inferq[otel]``; without it
    the trace ids still flow through logs, messages, rows and webhooks (``app.tracing``)."""

    worker_metrics_port: int = Field(0, ge=0, le=65535)
    """First port of a worker process's Prometheus endpoint (``/metrics`` on every address):
    each process takes the first free one of this port and the 15 after it, so several workers
    on one host each get their own (the worker logs which). 0: no endpoint."""

    queue_metrics_ttl_seconds: float = Field(5.0, ge=0)
    """How long the API's queue gauges (``inferq_queued_inputs``, oldest queued age; one
    grouped query on Postgres) are reused between scrapes."""

    task_events: bool = False
    """Celery task events (``worker_send_task_events``, ``task_send_sent_event``): what Flower
    and ``celery events`` need to show tasks. Off by default: every task then sends extra
    messages through the broker (see docs/operations.md)."""

    @field_validator("database_url")
    @classmethod
    def _normalise_db_url(cls, v: str) -> str:
        """Accept ``postgres://`` and plain ``postgresql://``; use psycopg 3."""
        if v.startswith("postgres://"):
            v = "postgresql://" + v[len("postgres://") :]
        if v.startswith("postgresql://"):
            v = "postgresql+psycopg://" + v[len("postgresql://") :]
        return v

    @field_validator("broker_url")
    @classmethod
    def _normalise_broker_url(cls, v: str) -> str:
        """``rabbitmq://`` is an alias of ``amqp://``."""
        if v.startswith("rabbitmq://"):
            v = "amqp://" + v[len("rabbitmq://") :]
        return v

    @field_validator("egress_allow", mode="before")
    @classmethod
    def _split_egress_allow(cls, v: Any) -> Any:
        """Accept a JSON list or a comma-separated string (``[::1]`` alone is not JSON)."""
        if not isinstance(v, str):
            return v
        if v.strip().startswith("["):
            try:
                parsed = json.loads(v)
            except ValueError:
                parsed = None
            if isinstance(parsed, list):
                return parsed
        return [part.strip() for part in v.split(",") if part.strip()]

    @field_validator("tenant_retention")
    @classmethod
    def _check_tenant_retention(cls, v: dict[str, dict[str, float]]) -> Any:
        check_tenant_retention(v)
        return v

    @model_validator(mode="after")
    def _refuse_dev_secret(self) -> Settings:
        if self.env != "development" and self.webhook_secret == DEV_WEBHOOK_SECRET:
            raise ValueError("INFERQ_WEBHOOK_SECRET must be set outside development")
        return self

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_keys)

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def effective_runner_threads(self) -> int:
        return self.runner_threads or (os.cpu_count() or 1)


def build_settings(**overrides: Any) -> Settings:
    """Build settings from the environment, with explicit overrides (tests pass their URLs)."""
    return Settings(**overrides)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
