"""Integrations as a tenant manages them: create, change, delete, list with recent activity.

Secrets go in through here and are sealed at once; what comes out (``integration_public``)
names which secrets are set, never their values.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from app.db import integrations as crud
from app.db.base import new_id, utcnow
from app.db.deliveries import Delivery
from app.db.engine import session_scope
from app.db.integrations import Integration, IntegrationEvent
from app.delivery import egress
from app.delivery.egress import EgressPolicy
from app.errors import Conflict, InvalidInput, NotFound
from app.integrations.config import (
    ID_PATTERN,
    AnswerConfig,
    GenericConfig,
    IntegrationSettings,
    TelegramConfig,
    ZendeskConfig,
    validate_config,
    validate_secrets,
)
from app.integrations.generic import check_templates
from app.integrations.mapping import PLACEHOLDER, placeholders
from app.integrations.secrets import SecretBox
from app.predictions.views import iso
from app.registry import Registry

HOOK_PATHS = {"telegram": "/hooks/telegram/{id}", "zendesk": "/hooks/tickets/{id}"}


@dataclass(slots=True)
class Loaded:
    """An integration ready to use: typed config, secrets in clear (keep them in memory only)."""

    id: str
    tenant: str
    kind: str
    name: str
    enabled: bool
    config: AnswerConfig
    secrets: dict[str, str]


def check(
    kind: str,
    config: dict[str, Any],
    secrets: dict[str, Any],
    registry: Registry | None,
    policy: EgressPolicy | None = None,
) -> tuple[AnswerConfig, dict[str, str]]:
    """Validate an integration as a whole; ``InvalidInput`` names what is wrong.

    With ``policy`` (a tenant's integration), every URL it will call must be one the egress
    policy can allow (``EgressDenied``, a 422); the address it resolves to is checked again
    on every connection.
    """
    cfg = validate_config(kind, config)
    if policy is not None:
        for field, url in outbound_urls(cfg):
            egress.check_url(url, policy, field=field)
    clear = validate_secrets(kind, secrets)
    if isinstance(cfg, GenericConfig):
        check_templates(cfg)
        for name in placeholders(cfg.write_back.headers):
            if name.removeprefix("secret.") not in clear:
                raise InvalidInput(f"config.write_back.headers uses {{{{{name}}}}}: no such secret")
    if registry is not None:
        entry = registry.get(cfg.model, cfg.model_version)
        if entry.manifest.kind != "text-classification":
            raise InvalidInput(
                f"config.model: {cfg.model!r} is a {entry.manifest.kind} model; "
                "integrations answer with a text-classification model (e.g. ticket-triage)"
            )
    return cfg, clear


def outbound_urls(cfg: AnswerConfig) -> list[tuple[str, str]]:
    """``(field, url)`` of every URL an integration's write-backs go to (placeholders of a
    template filled with a stand-in: the rendered URL is checked again when it is sent)."""
    if isinstance(cfg, TelegramConfig):
        return [] if cfg.api_base is None else [("config.api_base", cfg.api_base)]
    if isinstance(cfg, ZendeskConfig):
        return [("config.base_url", cfg.base_url)]
    if isinstance(cfg, GenericConfig):
        return [("config.write_back.url", PLACEHOLDER.sub("x", cfg.write_back.url))]
    return []


def create(
    *,
    sessions: sessionmaker[Session],
    box: SecretBox,
    registry: Registry | None,
    policy: EgressPolicy | None = None,
    tenant: str,
    kind: str,
    name: str,
    config: dict[str, Any],
    secrets: dict[str, Any],
    enabled: bool = True,
) -> Integration:
    """Store a new integration; ``Conflict`` when the tenant already has one of that name."""
    cfg, clear = check(kind, config, secrets, registry, policy)
    now = utcnow()
    row = Integration(
        id=new_id("itg"),
        tenant=tenant,
        kind=kind,
        name=name,
        enabled=enabled,
        config=cfg.model_dump(exclude_defaults=True),
        secrets=box.seal(clear),
        secret_names=sorted(clear),
        source="api",
        created_at=now,
        updated_at=now,
    )
    try:
        with session_scope(sessions) as s:
            s.add(row)
    except IntegrityError as exc:
        raise Conflict(f"an integration named {name!r} exists already", code="name_taken") from exc
    return row


def _owned(s: Session, tenant: str, integration_id: str) -> Integration:
    row = crud.get_for_tenant(session=s, tenant=tenant, integration_id=integration_id)
    if row is None:
        raise NotFound(f"integration {integration_id} not found")
    return row


def _writable(row: Integration) -> None:
    if row.source == "settings":
        raise Conflict(
            f"integration {row.id} is configured by settings (INFERQ_INTEGRATIONS); change it there",
            code="read_only",
        )


def update(
    *,
    sessions: sessionmaker[Session],
    box: SecretBox,
    registry: Registry | None,
    policy: EgressPolicy | None = None,
    tenant: str,
    integration_id: str,
    changes: dict[str, Any],
) -> Integration:
    """Change name, enabled, config (merged: a null value drops a key) or secrets (merged)."""
    try:
        with session_scope(sessions) as s:
            row = _owned(s, tenant, integration_id)
            _writable(row)
            config = dict(row.config)
            for k, v in (changes.get("config") or {}).items():
                if v is None:
                    config.pop(k, None)
                else:
                    config[k] = v
            secrets = box.open(row.secrets)
            secrets.update(changes.get("secrets") or {})
            cfg, clear = check(row.kind, config, secrets, registry, policy)
            row.config = cfg.model_dump(exclude_defaults=True)
            row.secrets = box.seal(clear)
            row.secret_names = sorted(clear)
            if changes.get("name") is not None:
                row.name = changes["name"]
            if changes.get("enabled") is not None:
                row.enabled = bool(changes["enabled"])
            row.updated_at = utcnow()
            s.flush()
            return row
    except IntegrityError as exc:
        raise Conflict("an integration of that name exists already", code="name_taken") from exc


def delete(*, sessions: sessionmaker[Session], tenant: str, integration_id: str) -> None:
    with session_scope(sessions) as s:
        row = _owned(s, tenant, integration_id)
        _writable(row)
        crud.delete_integration(session=s, integration=row)


def get(*, sessions: sessionmaker[Session], tenant: str, integration_id: str) -> Integration:
    with session_scope(sessions) as s:
        return _owned(s, tenant, integration_id)


def load(*, sessions: sessionmaker[Session], box: SecretBox, integration_id: str) -> Loaded | None:
    """Any tenant's integration by id, decrypted (for hooks and senders)."""
    with session_scope(sessions) as s:
        row = crud.get_integration(session=s, integration_id=integration_id)
    return None if row is None else opened(row, box)


def opened(row: Integration, box: SecretBox) -> Loaded:
    return Loaded(
        row.id,
        row.tenant,
        row.kind,
        row.name,
        row.enabled,
        validate_config(row.kind, row.config),
        box.open(row.secrets),
    )


def sync_settings(
    *, sessions: sessionmaker[Session], box: SecretBox, isettings: IntegrationSettings
) -> list[str]:
    """Keep ``INFERQ_INTEGRATIONS`` in the database (ids are the configured ones).

    Models are not checked here (a worker-less process may have none); a bad entry raises
    ``InvalidInput`` naming it.
    """
    rows = []
    now = utcnow()
    for i, item in enumerate(isettings.integrations):
        iid = str(item.get("id", ""))
        if not re.match(ID_PATTERN, iid):
            raise InvalidInput(f"INFERQ_INTEGRATIONS[{i}].id must match {ID_PATTERN}")
        kind = str(item.get("kind", ""))
        try:
            cfg, clear = check(kind, item.get("config") or {}, item.get("secrets") or {}, None)
        except InvalidInput as exc:
            raise InvalidInput(f"INFERQ_INTEGRATIONS[{i}] ({iid}): {exc.message}") from exc
        rows.append(
            {
                "id": iid,
                "tenant": str(item.get("tenant") or "default"),
                "kind": kind,
                "name": str(item.get("name") or iid),
                "enabled": bool(item.get("enabled", True)),
                "config": cfg.model_dump(exclude_defaults=True),
                "secrets": box.seal(clear),
                "secret_names": sorted(clear),
                "created_at": now,
                "updated_at": now,
            }
        )
    if not rows:
        return []
    with session_scope(sessions) as s:
        return crud.upsert_from_settings(session=s, rows=rows)


# --- what the API shows ---------------------------------------------------------------------


def listed(
    *, sessions: sessionmaker[Session], tenant: str, recent: int = 5
) -> list[dict[str, Any]]:
    """The tenant's integrations with their activity."""
    with session_scope(sessions) as s:
        rows = crud.list_for_tenant(session=s, tenant=tenant)
        return views(s, rows, recent=recent, attempts=False)


def detailed(
    *, sessions: sessionmaker[Session], tenant: str, integration_id: str, recent: int = 20
) -> dict[str, Any]:
    with session_scope(sessions) as s:
        row = _owned(s, tenant, integration_id)
        return views(s, [row], recent=recent, attempts=True)[0]


def views(
    s: Session, rows: list[Integration], *, recent: int, attempts: bool
) -> list[dict[str, Any]]:
    ids = [r.id for r in rows]
    if not ids:
        return []
    events = crud.counts_by_status(session=s, table=IntegrationEvent, ids=ids)
    deliveries = crud.counts_by_status(session=s, table=Delivery, ids=ids)
    latest = crud.recent_events(session=s, ids=ids, per_integration=recent)
    event_ids = [e.id for evs in latest.values() for e in evs]
    outs = crud.deliveries_of(session=s, event_ids=event_ids)
    tries = (
        crud.attempts_of(session=s, delivery_ids=[d.id for ds in outs.values() for d in ds])
        if attempts
        else {}
    )
    result = []
    for r in rows:
        body = integration_public(r)
        body["activity"] = {
            "events": events[r.id],
            "deliveries": deliveries[r.id],
            "recent": [_event_public(e, outs.get(e.id, []), tries) for e in latest[r.id]],
        }
        result.append(body)
    return result


def integration_public(r: Integration) -> dict[str, Any]:
    """An integration as the API shows it: secrets by name only."""
    return {
        "id": r.id,
        "kind": r.kind,
        "name": r.name,
        "enabled": r.enabled,
        "source": r.source,
        "config": r.config,
        "secrets": {name: "set" for name in r.secret_names},
        "hook_path": HOOK_PATHS.get(r.kind, "/hooks/tickets/{id}").format(id=r.id),
        "created_at": iso(r.created_at),
        "updated_at": iso(r.updated_at),
    }


def _event_public(
    e: IntegrationEvent, deliveries: list[Delivery], tries: dict[str, list[Any]]
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": e.id,
        "external_id": e.external_id,
        "kind": e.kind,
        "status": e.status,
        "prediction_id": e.prediction_id,
        "created_at": iso(e.created_at),
        "deliveries": [],
    }
    for d in deliveries:
        out: dict[str, Any] = {
            "id": d.id,
            "action": d.action,
            "status": d.status,
            "attempts": d.attempt_count,
            "last_error": d.last_error,
            "dead_reason": d.dead_reason,
            "delivered_at": iso(d.delivered_at),
        }
        if d.id in tries:
            out["attempt_log"] = [
                {
                    "attempt": a.attempt,
                    "at": iso(a.started_at),
                    "status_code": a.status_code,
                    "error": a.error,
                    "retry_after_s": a.retry_after_s,
                    "duration_ms": round(a.duration_ms, 1),
                }
                for a in tries[d.id]
            ]
        body["deliveries"].append(out)
    return body
