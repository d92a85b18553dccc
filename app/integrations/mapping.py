"""Pure helpers the connectors share: field lookup, templates, HMAC checks, triage wording."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from typing import Any

import orjson

from app.errors import InvalidInput

_MISSING = object()
PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_.]+)\s*\}\}")


def lookup(doc: Any, path: str) -> Any:
    """The value at a JSON pointer (``/ticket/id``) or dotted path (``ticket.id``); None if absent.

    Array elements are addressed by index in both forms (``/items/0``, ``items.0``).
    """
    if path.startswith("/"):
        parts = [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]
    else:
        parts = path.split(".")
    value = doc
    for part in parts:
        if isinstance(value, dict):
            value = value.get(part, _MISSING)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            value = _MISSING
        if value is _MISSING:
            return None
    return value


def as_text(value: Any) -> str:
    """A field's value as text (ids may come as numbers)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        return str(value)
    return orjson.dumps(value).decode()


def render(template: Any, context: dict[str, Any]) -> Any:
    """Fill ``{{name}}`` placeholders (dotted names reach into dicts) throughout a JSON template.

    A string that is exactly one placeholder becomes the value itself (a list stays a list);
    elsewhere the value is written into the text. An unknown name is an ``InvalidInput``.
    """
    if isinstance(template, dict):
        return {k: render(v, context) for k, v in template.items()}
    if isinstance(template, list):
        return [render(v, context) for v in template]
    if not isinstance(template, str):
        return template
    whole = PLACEHOLDER.fullmatch(template.strip())
    if whole:
        return _resolve(whole.group(1), context)
    return PLACEHOLDER.sub(lambda m: as_text(_resolve(m.group(1), context)), template)


def _resolve(name: str, context: dict[str, Any]) -> Any:
    value = lookup(context, name)
    if value is None and name.split(".")[0] not in context:
        raise InvalidInput(f"unknown placeholder {{{{{name}}}}}; known: {sorted(context)}")
    return value


def placeholders(template: Any) -> set[str]:
    """Every placeholder name used in a template."""
    return set(PLACEHOLDER.findall(orjson.dumps(template).decode()))


def hmac_sha256(secret: str, message: bytes) -> bytes:
    return hmac.new(secret.encode(), message, hashlib.sha256).digest()


def signature_matches(
    secret: str, message: bytes, given: str, *, encoding: str = "hex", prefix: str = ""
) -> bool:
    """Constant-time check of ``given`` against HMAC-SHA256(secret, message)."""
    digest = hmac_sha256(secret, message)
    expected = digest.hex() if encoding == "hex" else base64.b64encode(digest).decode()
    return hmac.compare_digest((prefix + expected).encode(), given.strip().encode())


def heads(output: dict[str, Any]) -> list[tuple[str, str, float | None]]:
    """A classifier's answer as ``(head, label, score)``, e.g. ``("urgency", "high", 0.71)``."""
    out = []
    order = {"category": 0, "urgency": 1}  # JSONB does not keep key order
    for key in sorted(output, key=lambda k: (order.get(k, 2), k)):
        value = output[key]
        scores = output.get(f"{key}_scores")
        if isinstance(value, str) and isinstance(scores, dict):
            score = scores.get(value)
            out.append((key, value, float(score) if isinstance(score, int | float) else None))
    return out


def describe(output: dict[str, Any]) -> str:
    """``category: billing (87%), urgency: high (64%)``."""
    parts = []
    for head, label, score in heads(output):
        pct = "" if score is None else f" ({score:.0%})"
        parts.append(f"{head}: {label.replace('_', ' ')}{pct}")
    return ", ".join(parts) or "no label"


def triage_context(
    *, output: dict[str, Any], tag_prefix: str, priority_map: dict[str, str]
) -> dict[str, Any]:
    """What a ticket write-back may use: labels, tags, priority and a note."""
    ctx: dict[str, Any] = {"output": output}
    tags = [tag_prefix]
    for head, label, score in heads(output):
        ctx[head] = label
        ctx[f"{head}_score"] = score
        tag_label = re.sub(r"[^a-z0-9_]+", "_", label.lower())
        tags.append(
            f"{tag_prefix}_{tag_label}"
            if head == "category"
            else f"{tag_prefix}_{head}_{tag_label}"
        )
    ctx["tags"] = tags
    urgency = ctx.get("urgency")
    ctx["priority"] = priority_map.get(urgency) if isinstance(urgency, str) else None
    ctx["note"] = f"inferq triage: {describe(output)}."
    return ctx
