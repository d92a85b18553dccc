"""``/v1/jobs``: bulk jobs from inline inputs or a streamed JSONL/CSV upload; results; cancel."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse

from api.deps import Runtime, RuntimeDep, TenantDep
from api.longpoll import MAX_WAIT_S, wait_final
from api.main import STREAMED_PATHS
from api.multipart import Part, read_events
from api.openapi import errors, json_body, multipart_body
from api.public import JobList, JobPublic
from api.responses import JSON
from app import retention
from app.db.jobs import Job, JobStatus
from app.errors import InvalidInput, PayloadTooLarge
from app.jobs import results, service
from app.jobs.ingest import JobPublisher, JobWriter
from app.jobs.lines import detect_format

router = APIRouter(prefix="/v1", tags=["jobs"])
STREAMED_PATHS.add("/v1/jobs")

BLOCK = 1 << 20
FORM_FIELDS = ("model", "model_version", "callback_url", "format", "ttl_s")
MAX_FIELD_BYTES = 4096
FORM_OVERHEAD = 64 << 10
URL = "^https?://"
"""What a ``callback_url`` must start with (checked by ``_check_url``; declared for OpenAPI)."""


class JobCreate(BaseModel):
    """Body of ``POST /v1/jobs`` with inline inputs."""

    model_config = ConfigDict(
        extra="forbid",
        protected_namespaces=(),
        json_schema_extra={
            "examples": [{"model": "ticket-triage", "inputs": [{"text": "refund please"}] * 2}]
        },
    )

    model: str = Field(min_length=1, max_length=100)
    model_version: str | None = Field(None, max_length=50)
    inputs: list[Any] = Field(min_length=1)
    callback_url: str | None = Field(None, max_length=2000, json_schema_extra={"pattern": URL})
    ttl_s: float | None = Field(None, gt=0)
    """Seconds to keep the job and its results after it was created (at most ``max_ttl``)."""

    @field_validator("callback_url")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        return _check_url(v)


def job_body() -> dict[str, Any]:
    """The two bodies ``POST /v1/jobs`` reads: inline JSON inputs or a multipart upload."""
    extra = json_body(JobCreate)
    extra["requestBody"]["content"].update(
        multipart_body(
            {
                "file": {
                    "type": "string",
                    "format": "binary",
                    "minLength": 1,
                    "description": "JSONL or CSV",
                },
                "model": {"type": "string", "minLength": 1, "maxLength": 100},
                "model_version": {"type": "string", "maxLength": 50},
                "callback_url": {"type": "string", "maxLength": 2000, "pattern": URL},
                "format": {"type": "string", "enum": ["jsonl", "csv"]},
                "ttl_s": {"type": "number", "exclusiveMinimum": 0},
            },
            required=["file", "model"],
        )["requestBody"]["content"]
    )
    return extra


def _check_url(v: str | None) -> str | None:
    if v is not None and not v.startswith(("http://", "https://")):
        raise ValueError("callback_url must be an http:// or https:// URL")
    return v


def _ttl(field: str | None) -> float | None:
    """The ``ttl_s`` form field: a positive number of seconds, or absent."""
    if not field:
        return None
    try:
        ttl = float(field)
    except ValueError:
        ttl = -1.0
    if not ttl > 0:
        raise InvalidInput(f"ttl_s must be a positive number of seconds, got {field!r}")
    return ttl


def _kept(rt: Runtime, tenant: str, job_id: str) -> contextlib.AbstractContextManager[None]:
    """A job not found (unknown, another tenant's or expired) says how long jobs are kept."""
    return retention.noting(rt.settings, retention.Kind.jobs, job_id, tenant)


def _publisher(rt: Runtime) -> JobPublisher:
    if not isinstance(rt.publisher, JobPublisher):  # pragma: no cover - wiring error
        raise TypeError("the API's publisher cannot publish job chunks")
    return rt.publisher


@router.post(
    "/jobs",
    status_code=202,
    response_model=JobPublic,
    responses=errors(422, 429),
    openapi_extra=job_body(),
)
async def create_job(request: Request, rt: RuntimeDep, tenant: TenantDep) -> JSON:
    """Start a bulk job: JSON ``{"model", "inputs"}`` or a multipart JSONL/CSV ``file``."""
    ctype = request.headers.get("content-type", "").lower()
    if ctype.startswith("multipart/form-data"):
        job = await _from_upload(request, rt, tenant)
    elif ctype.startswith("application/json") or not ctype:
        job = await _from_json(request, rt, tenant)
    else:
        raise InvalidInput(
            f"Content-Type {ctype.split(';')[0]!r} is not accepted: send application/json "
            "with 'inputs', or multipart/form-data with a 'file'",
            code="unsupported_format",
        )
    return JSON(
        service.job_public(job), status_code=202, headers={"Location": f"/v1/jobs/{job.id}"}
    )


async def _from_json(request: Request, rt: RuntimeDep, tenant: str) -> Job:
    raw = bytearray()
    async for block in request.stream():
        raw += block
        if len(raw) > rt.settings.max_body_bytes:
            raise PayloadTooLarge(
                f"the request body is over the limit of {rt.settings.max_body_bytes} bytes; "
                "upload big jobs as a multipart file"
            )
    if not raw:
        raise InvalidInput("the request body is empty; send a JSON object or a multipart file")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidInput("the body must be a JSON object")
    try:
        body = JobCreate.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "body"
        raise InvalidInput(f"{where}: {err['msg']}") from exc
    return await run_in_threadpool(
        lambda: service.create_job(
            sessions=rt.sessions,
            publisher=_publisher(rt),
            registry=rt.registry,
            settings=rt.settings,
            tenant=tenant,
            model=body.model,
            model_version=body.model_version,
            lines=body.inputs,
            fmt="rows",
            callback_url=body.callback_url,
            source={"type": "inline"},
            ttl_s=body.ttl_s,
        )
    )


class _Upload:
    """The ``file`` part of a form, cut into chunks as it arrives (or spooled to disk first
    when the ``model`` field comes after the file)."""

    def __init__(self, rt: Runtime, tenant: str, part: Part, fields: dict[str, str]) -> None:
        self.rt = rt
        self.tenant = tenant
        self.part = part
        self.limit = rt.settings.max_job_upload_bytes
        self.writer: JobWriter | None = None
        self.spool: Any = None
        self.size = 0
        self.buf = bytearray()
        self.inflight: asyncio.Future[None] | None = None
        if "model" in fields:
            self.writer = self._open(fields)
        else:
            self.spool = tempfile.SpooledTemporaryFile(max_size=BLOCK)  # noqa: SIM115 - closed by finish/abort

    def _open(self, fields: dict[str, str]) -> JobWriter:
        fmt_field = fields.get("format")
        if fmt_field is not None and fmt_field not in ("jsonl", "csv"):
            raise InvalidInput(f"format must be 'jsonl' or 'csv', got {fmt_field!r}")
        fmt = fmt_field or detect_format(self.part.filename, self.part.content_type)
        try:
            callback_url = _check_url(fields.get("callback_url") or None)
        except ValueError as exc:
            raise InvalidInput(f"callback_url: {exc}") from exc
        return service.open_job(
            sessions=self.rt.sessions,
            publisher=_publisher(self.rt),
            registry=self.rt.registry,
            settings=self.rt.settings,
            tenant=self.tenant,
            model=fields["model"],
            model_version=fields.get("model_version") or None,
            fmt="csv" if fmt == "csv" else "jsonl",
            filename=self.part.filename,
            callback_url=callback_url,
            max_bytes=self.limit,
            ttl_s=_ttl(fields.get("ttl_s")),
        )

    async def write(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) >= BLOCK:
            await self._drain()

    async def _drain(self) -> None:
        """Hand the buffered block on. Feeding (cutting, storing, publishing) runs in a thread
        while the next block is read; at most one block is in flight, which bounds memory."""
        await self._settle()
        block, self.buf = bytes(self.buf), bytearray()
        if self.writer is not None:
            self.inflight = asyncio.ensure_future(run_in_threadpool(self.writer.feed, block))
            return
        self.size += len(block)
        if self.size > self.limit:
            raise PayloadTooLarge(f"the file is over the limit of {self.limit} bytes")
        await run_in_threadpool(self.spool.write, block)

    async def _settle(self) -> None:
        if self.inflight is not None:
            inflight, self.inflight = self.inflight, None
            await inflight

    async def finish(self, fields: dict[str, str]) -> Job:
        await self._drain()
        await self._settle()
        if self.writer is not None and "ttl_s" in fields and self.writer.ttl_s is None:
            # the job was stored as the file came in, under the retention then known
            raise InvalidInput("form field 'ttl_s' must come before the 'file' part")
        if self.writer is None:
            if "model" not in fields:
                raise InvalidInput("the form has no 'model' field")
            self.writer = self._open(fields)
            await run_in_threadpool(self._replay)
            self.spool.close()
            self.spool = None
        source = {"type": "upload", "filename": self.part.filename}
        return await run_in_threadpool(self.writer.finish, source)

    def _replay(self) -> None:
        assert self.writer is not None
        self.spool.seek(0)
        while block := self.spool.read(BLOCK):
            self.writer.feed(block)

    async def abort(self) -> None:
        with contextlib.suppress(Exception):
            await self._settle()
        if self.spool is not None:
            self.spool.close()
        if self.writer is not None:
            await run_in_threadpool(self.writer.abort)


async def _from_upload(request: Request, rt: Runtime, tenant: str) -> Job:
    length = request.headers.get("content-length", "")
    limit = rt.settings.max_job_upload_bytes
    if length.isdigit() and int(length) > limit + FORM_OVERHEAD:
        raise PayloadTooLarge(f"the upload is over the limit of {limit} bytes")
    fields: dict[str, str] = {}
    upload: _Upload | None = None
    part: Part | None = None
    value = bytearray()
    try:
        async for kind, payload in read_events(request.headers["content-type"], request.stream()):
            if isinstance(payload, Part):  # a part starts
                part = _check_part(payload, upload)
                if part.name == "file":
                    upload = _Upload(rt, tenant, part, fields)
                value.clear()
            elif isinstance(payload, bytes) and part is not None:  # some of its bytes
                if upload is not None and part.name == "file":
                    await upload.write(payload)
                    continue
                value += payload
                if len(value) > MAX_FIELD_BYTES:
                    raise InvalidInput(f"form field {part.name!r} is over {MAX_FIELD_BYTES} bytes")
            elif kind == "end" and part is not None and part.name != "file":
                fields[part.name] = value.decode("utf-8", "replace").strip()
        if upload is None:
            raise InvalidInput(
                "the form has no 'file' part: upload the JSONL or CSV file as 'file'"
            )
        return await upload.finish(fields)
    except BaseException:
        if upload is not None:
            await upload.abort()
        raise


def _check_part(part: Part, upload: _Upload | None) -> Part:
    if part.name == "file":
        if upload is not None:
            raise InvalidInput("the form has more than one 'file' part; send one file per job")
        return part
    if part.is_file:
        raise InvalidInput(f"unexpected file in form field {part.name!r}; send it as 'file'")
    if part.name not in FORM_FIELDS:
        raise InvalidInput(
            f"unknown form field {part.name!r}; allowed: file, {', '.join(FORM_FIELDS)}"
        )
    return part


@router.get("/jobs", response_model=JobList)
async def list_jobs(
    rt: RuntimeDep,
    tenant: TenantDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    schedule_id: str | None = None,
) -> JSON:
    """The caller's newest jobs (of one schedule, with ``schedule_id``)."""
    jobs = await run_in_threadpool(
        lambda: service.list_jobs(
            sessions=rt.sessions, tenant=tenant, limit=limit, schedule_id=schedule_id
        )
    )
    return JSON({"jobs": [service.job_public(j) for j in jobs]})


@router.get("/jobs/{job_id}", response_model=JobPublic, responses=errors(404))
async def get_job(
    job_id: str,
    rt: RuntimeDep,
    tenant: TenantDep,
    wait: Annotated[float, Query(ge=0, le=MAX_WAIT_S)] = 0,
) -> JSON:
    """A job's state and its request counts; ``?wait=<s>`` holds the answer until the job has
    ended (succeeded, failed or cancelled) or ``wait`` seconds have passed."""

    async def load() -> Job:
        with _kept(rt, tenant, job_id):
            return await run_in_threadpool(
                lambda: service.get_job(sessions=rt.sessions, tenant=tenant, job_id=job_id)
            )

    if wait <= 0:
        return JSON(service.job_public(await load()))
    job = await wait_final(rt, job_id, load, lambda j: JobStatus(j.status).is_final, wait)
    return JSON(service.job_public(job))


@router.get(
    "/jobs/{job_id}/results",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "One JSON object (``jsonl``) or CSV row per input.",
            "content": {
                m.split(";")[0]: {"schema": {"type": "string"}}
                for m in results.MEDIA_TYPES.values()
            },
        },
        **errors(404, 409, 422),
    },
)
async def job_results(
    job_id: str,
    rt: RuntimeDep,
    tenant: TenantDep,
    format: Annotated[str, Query(json_schema_extra={"enum": list(results.MEDIA_TYPES)})] = "jsonl",
) -> StreamingResponse:
    """One line per input, in input order: ``custom_id`` and ``output`` or ``error``."""
    with _kept(rt, tenant, job_id):
        blocks = await run_in_threadpool(
            lambda: results.open_results(
                sessions=rt.sessions, registry=rt.registry, tenant=tenant, job_id=job_id, fmt=format
            )
        )
    return StreamingResponse(
        blocks,
        media_type=results.MEDIA_TYPES[format],
        headers={"Content-Disposition": f'attachment; filename="{job_id}.{format}"'},
    )


@router.post("/jobs/{job_id}/cancel", response_model=JobPublic, responses=errors(404, 409))
async def cancel_job(job_id: str, rt: RuntimeDep, tenant: TenantDep) -> JSON:
    """Cancel what has not started yet (running chunks finish); 409 once the job has ended."""
    with _kept(rt, tenant, job_id):
        job = await run_in_threadpool(
            lambda: service.cancel_job(sessions=rt.sessions, tenant=tenant, job_id=job_id)
        )
    return JSON(service.job_public(job))
