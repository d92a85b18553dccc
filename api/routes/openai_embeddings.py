"""``POST /v1/embeddings``: OpenAI's embeddings endpoint on inferq's durable prediction path.

The texts become predictions exactly as ``POST /v1/predictions`` with ``Prefer: wait`` makes
them (``predictions.accept``: stored before they are published, batched by the workers,
idempotent with ``Idempotency-Key``, tenant-scoped, admission-controlled); the answer waits
for all of them, up to ``openai_timeout_seconds``, then is 504 ``timeout``.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from api.deps import Runtime, get_tenant
from api.openai_errors import OpenAIRoute, Timeout
from api.openapi import json_body, openai_errors
from api.public import EmbeddingList
from api.responses import JSON
from api.routes import predictions
from app.db.models import Status
from app.errors import InvalidInput
from app.openai_compat import embeddings, wire
from app.openai_compat.tokens import TokenCounter
from app.predictions import service

router = APIRouter(prefix="/v1", tags=["openai"], route_class=OpenAIRoute)

COUNTER = TokenCounter()
"""This process's tokenizers, for ``usage`` (and the batches' plans)."""
INLINE_TOKENIZE = 16
"""Up to this many texts are counted on the event loop; more go to the thread pool."""


@router.post(
    "/embeddings",
    response_model=EmbeddingList,
    responses=openai_errors(400, 404, 409, 429, 500, 504),
    openapi_extra=json_body(
        embeddings.EmbeddingsRequest, headers={"Idempotency-Key": predictions.MAX_HEADER}
    ),
)
async def create_embeddings(request: Request) -> JSON:
    """Embed a string or a list of strings (OpenAI's request and response)."""
    rt: Runtime = request.app.state.runtime
    tenant = await get_tenant(request, rt)
    key = request.headers.get("idempotency-key")
    if key is not None and len(key) > predictions.MAX_HEADER:
        raise InvalidInput(f"Idempotency-Key is longer than {predictions.MAX_HEADER} characters")
    req = wire.parse_body(await request.body(), embeddings.EmbeddingsRequest)
    entry = rt.registry.get(req.model)
    embeddings.check_model(entry, req)
    texts, listed = embeddings.texts_of(req)
    embeddings.check_texts(entry, texts, listed, rt.settings)
    sub = service.Submission(
        tenant=tenant,
        model=req.model,
        inputs=[{"text": t} for t in texts],
        many=listed,
        metadata={"openai": {"user": req.user}} if req.user is not None else None,
        idempotency_key=key,
    )
    rows = await predictions.accept(rt, sub)
    if len(texts) <= INLINE_TOKENIZE:
        tokens = sum(COUNTER.count(entry, texts))
    else:
        tokens = sum(await run_in_threadpool(COUNTER.count, entry, texts))
    timeout = rt.settings.openai_timeout_seconds
    done = await asyncio.gather(
        *(predictions._wait_final(rt, tenant, r["id"], timeout) for r in rows)
    )
    return _answer(
        entry.manifest.name, [_final(p) for p in done], tokens, req.encoding_format, timeout
    )


def _final(p: Any) -> Any:
    """A prediction as ``_answer`` reads it: a row, or the final document a NOTIFY brought."""
    if not isinstance(p, bytes):
        return p
    doc = orjson.loads(p)
    error = doc.get("error") or {}
    return SimpleNamespace(
        status=doc["status"],
        output=doc.get("output"),
        error_code=error.get("code"),
        error_message=error.get("message"),
    )


def _answer(model: str, done: list[Any], tokens: int, fmt: str, timeout: float) -> JSON:
    """The embeddings, or the first prediction's error; ``Timeout`` when one is not final."""
    if not all(Status(p.status).is_final for p in done):
        raise Timeout(
            f"the embeddings were not ready within {timeout:g} s; they go on and are kept: "
            "send the same request with the same Idempotency-Key to get them"
        )
    failed = next((p for p in done if p.status != Status.succeeded), None)
    if failed is not None:
        status, body = wire.result_error(
            failed.error_code or failed.status, failed.error_message or f"input {failed.status}"
        )
        return JSON(body, status_code=status)
    vectors = [p.output["embedding"] for p in done]
    return JSON(embeddings.response_body(model, vectors, tokens, fmt))
