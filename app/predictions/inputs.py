"""Validation of model inputs at the door, from the model's manifest (no runtime needed)."""

from __future__ import annotations

import math
from typing import Any

from app.errors import InvalidInput
from app.registry import Manifest


def validate_input(
    manifest: Manifest, value: Any, *, max_text_chars: int, where: str = "input"
) -> dict[str, Any]:
    """Return the normalised input, or raise ``InvalidInput`` naming the field that is wrong."""
    if not isinstance(value, dict):
        raise InvalidInput(f"{where} must be a JSON object, got {_type_name(value)}")
    if manifest.kind in ("text-embedding", "text-classification"):
        return _validate_text(value, max_text_chars=max_text_chars, where=where)
    if manifest.kind == "tabular":
        return _validate_features(value, n=manifest.n_features or 0, where=where)
    raise InvalidInput(f"model kind {manifest.kind!r} takes no input")  # pragma: no cover


def _validate_text(value: dict[str, Any], *, max_text_chars: int, where: str) -> dict[str, Any]:
    _no_extra(value, {"text"}, where)
    if "text" not in value:
        raise InvalidInput(f"{where}.text is required")
    text = value["text"]
    if not isinstance(text, str):
        raise InvalidInput(f"{where}.text must be a string, got {_type_name(text)}")
    if not text.strip():
        raise InvalidInput(f"{where}.text must not be empty")
    if len(text) > max_text_chars:
        raise InvalidInput(
            f"{where}.text has {len(text)} characters; the limit is {max_text_chars}",
            code="text_too_long",
        )
    return {"text": text}


def _validate_features(value: dict[str, Any], *, n: int, where: str) -> dict[str, Any]:
    _no_extra(value, {"features"}, where)
    if "features" not in value:
        raise InvalidInput(f"{where}.features is required")
    feats = value["features"]
    if not isinstance(feats, list):
        raise InvalidInput(f"{where}.features must be an array of {n} numbers")
    if len(feats) != n:
        raise InvalidInput(f"{where}.features must have exactly {n} numbers, got {len(feats)}")
    out: list[float] = []
    for i, x in enumerate(feats):
        if isinstance(x, bool) or not isinstance(x, int | float):
            raise InvalidInput(f"{where}.features[{i}] must be a number, got {_type_name(x)}")
        if not math.isfinite(x):
            raise InvalidInput(f"{where}.features[{i}] must be finite, got {x}")
        out.append(float(x))
    return {"features": out}


def _no_extra(value: dict[str, Any], allowed: set[str], where: str) -> None:
    extra = sorted(set(value) - allowed)
    if extra:
        raise InvalidInput(
            f"{where} has unknown field(s) {', '.join(extra)}; allowed: {sorted(allowed)}"
        )


def _type_name(value: Any) -> str:
    return {
        dict: "object",
        list: "array",
        str: "string",
        bool: "boolean",
        int: "number",
        float: "number",
        type(None): "null",
    }.get(type(value), type(value).__name__)
