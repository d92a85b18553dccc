"""``/v1/files``: OpenAI's files endpoints, for the Batch API's input, output and error files.

An upload streams to a spooled temporary file (memory up to a mebibyte, then disk) and is
stored in Postgres in one transaction (``app.openai_compat.files``); it is bounded by
``max_file_bytes`` (413) and seen only by its tenant (404 for anyone else).
"""

from __future__ import annotations

import contextlib
import math
import tempfile
from typing import IO, Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse

from api.deps import RuntimeDep, TenantDep
from api.main import STREAMED_PATHS
from api.multipart import Part, read_events
from api.openai_errors import OpenAIRoute
from api.openapi import multipart_body, openai_errors
from api.public import FileObject
from api.responses import JSON
from app.errors import InvalidInput, PayloadTooLarge
from app.openai_compat import batch_files, files

router = APIRouter(prefix="/v1", tags=["openai"], route_class=OpenAIRoute)
STREAMED_PATHS.add("/v1/files")

FIELDS = ("purpose", "expires_after[anchor]", "expires_after[seconds]")
MAX_FIELD_BYTES = 1024
FORM_OVERHEAD = 64 << 10
SPOOL_BYTES = 1 << 20
ANCHORS = ("created_at",)
"""What an upload's ``expires_after[seconds]`` may count from (OpenAI's only anchor)."""


class _Form:
    """The fields and the spooled ``file`` of an upload."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.fields: dict[str, str] = {}
        self.file: IO[bytes] | None = None
        self.filename = ""
        self.size = 0

    def start_file(self, part: Part) -> None:
        if self.file is not None:
            raise InvalidInput("the form has more than one 'file' part; send one file")
        self.file = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)  # noqa: SIM115 - closed in close()
        self.filename = part.filename or "upload.jsonl"

    def write(self, data: bytes) -> None:
        assert self.file is not None
        self.size += len(data)
        if self.size > self.limit:
            raise PayloadTooLarge(f"the file is over the limit of {self.limit} bytes")
        self.file.write(data)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


async def _read_form(request: Request, form: _Form) -> None:
    part: Part | None = None
    value = bytearray()
    async for kind, payload in read_events(request.headers["content-type"], request.stream()):
        if isinstance(payload, Part):
            part = payload
            if part.name == "file":
                form.start_file(part)
            elif part.name not in FIELDS:
                raise InvalidInput(f"unknown form field {part.name!r}; allowed: file, purpose")
            value.clear()
        elif isinstance(payload, bytes) and part is not None:
            if part.name == "file":
                await run_in_threadpool(form.write, payload)
                continue
            value += payload
            if len(value) > MAX_FIELD_BYTES:
                raise InvalidInput(f"form field {part.name!r} is over {MAX_FIELD_BYTES} bytes")
        elif kind == "end" and part is not None and part.name != "file":
            form.fields[part.name] = value.decode("utf-8", "replace").strip()


def _ttl(fields: dict[str, str]) -> float | None:
    anchor = fields.get("expires_after[anchor]")
    if anchor is not None and anchor not in ANCHORS:
        raise InvalidInput(f"expires_after[anchor] must be 'created_at', got {anchor!r}")
    seconds = fields.get("expires_after[seconds]")
    if not seconds:
        return None
    try:
        ttl = float(seconds)
    except ValueError:
        ttl = -1.0
    if not 0 < ttl < math.inf:  # NaN fails the comparison too
        raise InvalidInput(f"expires_after[seconds] must be a positive number, got {seconds!r}")
    return ttl


@router.post(
    "/files",
    response_model=FileObject,
    responses=openai_errors(400),
    openapi_extra=multipart_body(
        {
            "file": {"type": "string", "format": "binary", "minLength": 1, "description": "JSONL"},
            "purpose": {"type": "string", "enum": list(files.PURPOSES)},
            "expires_after[anchor]": {"type": "string", "enum": list(ANCHORS)},
            "expires_after[seconds]": {"type": "number", "exclusiveMinimum": 0},
        },
        required=["file", "purpose"],
    ),
)
async def create_file(request: Request, rt: RuntimeDep, tenant: TenantDep) -> JSON:
    """Upload a file: multipart ``file`` (JSONL) and ``purpose`` ``batch``."""
    ctype = request.headers.get("content-type", "")
    if not ctype.lower().startswith("multipart/form-data"):
        raise InvalidInput("send the file as multipart/form-data with 'file' and 'purpose'")
    limit = rt.settings.max_file_bytes
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit + FORM_OVERHEAD:
        raise PayloadTooLarge(f"the file is over the limit of {limit} bytes")
    form = _Form(limit)
    try:
        await _read_form(request, form)
        if form.file is None:
            raise InvalidInput("the form has no 'file' part")
        if "purpose" not in form.fields:
            raise InvalidInput("the form has no 'purpose' field; send purpose=batch")
        content = form.file
        content.seek(0)
        stored = await run_in_threadpool(
            lambda: files.store_file(
                sessions=rt.sessions,
                settings=rt.settings,
                tenant=tenant,
                purpose=form.fields["purpose"],
                filename=form.filename,
                content=content,
                ttl_s=_ttl(form.fields),
            )
        )
    finally:
        with contextlib.suppress(Exception):
            form.close()
    return JSON(files.file_public(stored))


@router.get("/files/{file_id}", response_model=FileObject, responses=openai_errors(404))
async def get_file(file_id: str, rt: RuntimeDep, tenant: TenantDep) -> JSON:
    """A file's object: its size, name, purpose and when it was made."""
    body: dict[str, Any] = await run_in_threadpool(
        lambda: batch_files.file_view(
            sessions=rt.sessions, registry=rt.registry, tenant=tenant, file_id=file_id
        )
    )
    return JSON(body)


@router.get(
    "/files/{file_id}/content",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The file's bytes (JSONL).",
            "content": {"application/jsonl": {"schema": {"type": "string"}}},
        },
        **openai_errors(404),
    },
)
async def file_content(file_id: str, rt: RuntimeDep, tenant: TenantDep) -> StreamingResponse:
    """A file's bytes: an upload as stored, a batch's output or error file in input order."""
    meta, blocks = await run_in_threadpool(
        lambda: batch_files.open_content(
            sessions=rt.sessions, registry=rt.registry, tenant=tenant, file_id=file_id
        )
    )
    return StreamingResponse(
        blocks,
        media_type="application/jsonl",
        headers={"Content-Disposition": f'attachment; filename="{meta["filename"]}"'},
    )
