"""OpenAI's embeddings request and response, on inferq's text-embedding models.

``EmbeddingsRequest`` is the body of ``POST /v1/embeddings`` (and of each line of a batch whose
endpoint it is); ``texts_of`` and ``check_model`` say what of it inferq serves; ``response_body``
is the answer. Every error is an ``InvalidInput`` / ``UnknownModel`` with a message that says
what to send instead.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from app.errors import InvalidInput
from app.openai_compat import wire
from app.predictions.inputs import validate_input
from app.registry import ModelEntry
from app.settings import Settings

MAX_USER = 256


class EmbeddingsRequest(BaseModel):
    """Body of ``POST /v1/embeddings``, as OpenAI defines it."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field(min_length=1, max_length=100)
    input: Any
    """A string or a list of strings (token-id arrays are refused: see ``texts_of``)."""
    encoding_format: Literal["float", "base64"] = "float"
    """``base64``: each vector as little-endian float32 bytes, base64-encoded."""
    dimensions: int | None = Field(None, ge=1)
    """Only the model's own size is accepted: no inferq model can shorten its vectors."""
    user: str | None = Field(None, max_length=MAX_USER)
    """Accepted and kept in the predictions' ``metadata``."""


def parse(data: Any, where: str = "body") -> EmbeddingsRequest:
    """Validate a decoded JSON body; ``InvalidInput`` naming the field otherwise."""
    return wire.parse_model(data, EmbeddingsRequest, where)


def texts_of(req: EmbeddingsRequest) -> tuple[list[str], bool]:
    """The texts to embed and whether ``input`` was a list (the answer's shape is the same)."""
    value = req.input
    if isinstance(value, str):
        return [value], False
    if not isinstance(value, list):
        raise InvalidInput("input must be a string or a list of strings")
    if not value:
        raise InvalidInput("input must not be an empty list")
    for i, item in enumerate(value):
        if isinstance(item, str):
            continue
        if isinstance(item, int | list) and not isinstance(item, bool):
            raise InvalidInput(
                "input as token ids is not supported: inferq tokenizes with each model's own "
                f"tokenizer, so send text (input[{i}] is "
                f"{'a token id' if isinstance(item, int) else 'a list of token ids'})",
                code="token_input_not_supported",
            )
        raise InvalidInput(f"input[{i}] must be a string")
    return list(value), True


def check_texts(entry: ModelEntry, texts: list[str], listed: bool, settings: Settings) -> None:
    """Each text as the model takes it (not empty, not too long), and not too many of them."""
    limit = settings.max_inputs_per_request
    if len(texts) > limit:
        raise InvalidInput(f"input may hold at most {limit} strings, got {len(texts)}")
    for i, text in enumerate(texts):
        where = f"input[{i}]" if listed else "input"
        try:
            validate_input(
                entry.manifest, {"text": text}, max_text_chars=settings.max_text_chars, where=where
            )
        except InvalidInput as exc:  # the model's input is {"text": ...}; OpenAI's is the text
            raise InvalidInput(
                exc.message.replace(f"{where}.text", where, 1), code=exc.code
            ) from None


def dimensions_of(entry: ModelEntry) -> int | None:
    """The vector size the model's output schema declares, if it does."""
    prop = entry.manifest.output_schema.get("properties", {}).get("embedding", {})
    size = prop.get("maxItems")
    return int(size) if isinstance(size, int) else None


def check_model(entry: ModelEntry, req: EmbeddingsRequest) -> None:
    """Refuse a model that makes no embeddings, and a ``dimensions`` it cannot give."""
    m = entry.manifest
    if m.kind != "text-embedding":
        raise InvalidInput(
            f"model {m.name!r} is a {m.kind} model; /v1/embeddings serves text-embedding "
            "models (GET /v1/models lists them); use POST /v1/predictions for this one",
            code="model_not_supported",
        )
    native = dimensions_of(entry)
    if req.dimensions is not None and req.dimensions != native:
        raise InvalidInput(
            f"model {m.name!r} makes {native}-dimension embeddings and cannot shorten them: "
            f"leave out dimensions (or send {native})",
            code="dimensions_not_supported",
        )


def encode(vector: Any, encoding_format: str) -> Any:
    """A vector as the answer carries it: floats, or base64 of little-endian float32 bytes."""
    if encoding_format == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
    return vector


def response_body(
    model: str, vectors: Sequence[Any], tokens: int, encoding_format: str
) -> dict[str, Any]:
    """``{"object": "list", "data": [...], "model", "usage"}``; ``tokens`` of every text."""
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": encode(v, encoding_format)}
            for i, v in enumerate(vectors)
        ],
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
