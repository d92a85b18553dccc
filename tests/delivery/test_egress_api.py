"""The egress policy at submit time, through a real API process: every way a caller hands us a
URL refuses an internal one, however it is spelt, with a 422 that names the field and the
reason, and stores nothing; a public URL is accepted the same ways."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.db.engine import make_engine, make_sessionmaker
from app.db.integrations import Integration
from app.db.jobs import Job
from app.db.models import Prediction
from app.settings import build_settings
from tests.conftest import Stack, StackFactory

KEYS = '{"key-a": "tenant-a", "key-b": "tenant-b"}'
A = {"Authorization": "Bearer key-a"}
FEATURES = {"features": [1.0] * 12}
TOKEN = "7311592024:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsawq"
PUBLIC = "https://hooks.example.com/x"
NOT_ALLOWED = "; outbound requests to internal addresses are not allowed"
CREDENTIALS = "must not carry credentials (user:password@host)"

# (url, what the message says after the field's name). The default stack allows 127.0.0.1
# only: 127.0.0.2 is loopback all the same, and refused.
DENIED: list[tuple[str, str]] = [
    (
        "http://169.254.169.254/latest/meta-data/",
        "points at the cloud metadata address (169.254.169.254)" + NOT_ALLOWED,
    ),
    ("http://[::1]:5432/", "points at a loopback address (::1)" + NOT_ALLOWED),
    ("http://127.0.0.2/", "points at a loopback address (127.0.0.2)" + NOT_ALLOWED),
    ("http://2130706434/", "points at a loopback address (127.0.0.2)" + NOT_ALLOWED),
    ("http://0177.0.0.2/", "points at a loopback address (127.0.0.2)" + NOT_ALLOWED),
    ("http://0x7f.0.0.2/", "points at a loopback address (127.0.0.2)" + NOT_ALLOWED),
    ("http://127.2/", "points at a loopback address (127.0.0.2)" + NOT_ALLOWED),
    ("http://10.0.0.1/", "points at a private address (10.0.0.1)" + NOT_ALLOWED),
    ("http://172.16.0.1/", "points at a private address (172.16.0.1)" + NOT_ALLOWED),
    ("http://192.168.1.1/", "points at a private address (192.168.1.1)" + NOT_ALLOWED),
    (
        "http://100.64.0.1/",
        "points at a carrier-grade NAT (shared) address (100.64.0.1)" + NOT_ALLOWED,
    ),
    ("http://224.0.0.1/", "points at a multicast address (224.0.0.1)" + NOT_ALLOWED),
    ("http://0.0.0.0/", "points at an unspecified address (0.0.0.0)" + NOT_ALLOWED),
    ("http://[fc00::1]/", "points at a private address (fc00::1)" + NOT_ALLOWED),
    ("http://[fe80::1%25eth0]/", "points at a link-local address (fe80::1)" + NOT_ALLOWED),
    (
        "http://[::ffff:127.0.0.2]/",
        "points at a loopback address 127.0.0.2 inside an IPv4-mapped IPv6 address"
        " (::ffff:7f00:2)" + NOT_ALLOWED,
    ),
    (
        "http://[::ffff:a9fe:a9fe]/",
        "points at the cloud metadata address 169.254.169.254 inside an IPv4-mapped IPv6"
        " address (::ffff:a9fe:a9fe)" + NOT_ALLOWED,
    ),
    ("http://localhost:8080/", "points at a loopback host name (localhost)" + NOT_ALLOWED),
    (
        "http://metadata.google.internal/",
        "points at an internal host name (metadata.google.internal)" + NOT_ALLOWED,
    ),
    ("http://user:pw@example.com/", CREDENTIALS),
    ("http://example.com@127.0.0.2/", CREDENTIALS),
    ("file:///etc/passwd", "must be an http or https URL, not 'file'"),
    ("gopher://x/", "must be an http or https URL, not 'gopher'"),
]
NOT_HTTP = ("file:", "gopher:")

GENERIC_CONFIG: dict[str, Any] = {
    "id_field": "/data/ticket/id",
    "text_fields": ["data.ticket.title", "data.ticket.body"],
    "signature_header": "X-Desk-Signature",
    "signature_prefix": "sha256=",
    "write_back": {
        "url": "https://desk.example.com/api/tickets/{{ticket_id}}",
        "method": "PATCH",
        "body": {"labels": "{{tags}}", "priority": "{{priority}}"},
        "headers": {"Authorization": "Bearer {{secret.api_token}}"},
    },
}


def name() -> str:
    return f"egress-{uuid.uuid4().hex[:8]}"


def telegram(url: str) -> dict[str, Any]:
    return {
        "kind": "telegram",
        "name": name(),
        "config": {"api_base": url},
        "secrets": {"token": TOKEN, "webhook_secret": "hook-secret"},
    }


def zendesk(url: str) -> dict[str, Any]:
    return {
        "kind": "zendesk",
        "name": name(),
        "config": {"base_url": url, "email": "bot@acme.example"},
        "secrets": {"signing_secret": "zd-signing", "api_token": "zd-token"},
    }


def generic(url: str) -> dict[str, Any]:
    return {
        "kind": "generic",
        "name": name(),
        "config": {**GENERIC_CONFIG, "write_back": {**GENERIC_CONFIG["write_back"], "url": url}},
        "secrets": {"signing_secret": "desk-secret", "api_token": "desk-token"},
    }


@dataclass(frozen=True)
class Way:
    """One way a caller hands us a URL."""

    id: str
    field: str
    table: type[Any]
    """What must not grow when the URL is refused (for a PATCH: the row must not change)."""
    send: Callable[[httpx.Client, dict[str, str], str], httpx.Response]
    accepted: int
    """The status of a public URL."""
    rows: int
    """Rows a public URL adds."""
    schema_http_only: bool = True
    """The body's schema refuses a scheme other than http(s) before the egress policy does
    (code ``invalid_input``); else the policy refuses it (``egress_denied``)."""
    patches: str | None = None
    """The kind of the existing integration a PATCH changes."""


def _predict(c: httpx.Client, _: dict[str, str], url: str) -> httpx.Response:
    return c.post(
        "/v1/predictions", json={"model": "churn-risk", "input": FEATURES, "callback_url": url}
    )


def _predict_many(c: httpx.Client, _: dict[str, str], url: str) -> httpx.Response:
    return c.post(
        "/v1/predictions",
        json={"model": "churn-risk", "inputs": [FEATURES, FEATURES], "callback_url": url},
    )


def _job(c: httpx.Client, _: dict[str, str], url: str) -> httpx.Response:
    return c.post(
        "/v1/jobs", json={"model": "churn-risk", "inputs": [FEATURES], "callback_url": url}
    )


def _upload(c: httpx.Client, _: dict[str, str], url: str) -> httpx.Response:
    line = b'{"features": [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]}\n'
    return c.post(
        "/v1/jobs",
        data={"model": "churn-risk", "callback_url": url},
        files={"file": ("in.jsonl", line * 3, "application/jsonl")},
    )


def _create(make: Callable[[str], dict[str, Any]]) -> Callable[..., httpx.Response]:
    def send(c: httpx.Client, _: dict[str, str], url: str) -> httpx.Response:
        return c.post("/v1/integrations", json=make(url))

    return send


def _patch(kind: str) -> Callable[..., httpx.Response]:
    def send(c: httpx.Client, existing: dict[str, str], url: str) -> httpx.Response:
        config: dict[str, Any]
        if kind == "telegram":
            config = {"api_base": url}
        elif kind == "zendesk":
            config = {"base_url": url}
        else:
            config = {"write_back": {**GENERIC_CONFIG["write_back"], "url": url}}
        return c.patch(f"/v1/integrations/{existing[kind]}", json={"config": config})

    return send


WAYS = [
    Way("predictions-input", "callback_url", Prediction, _predict, 202, 1),
    Way("predictions-inputs", "callback_url", Prediction, _predict_many, 202, 2),
    Way("jobs-json", "callback_url", Job, _job, 202, 1),
    Way("jobs-multipart", "callback_url", Job, _upload, 202, 1),
    Way("telegram-create", "config.api_base", Integration, _create(telegram), 201, 1),
    Way("zendesk-create", "config.base_url", Integration, _create(zendesk), 201, 1),
    Way(
        "generic-create",
        "config.write_back.url",
        Integration,
        _create(generic),
        201,
        1,
        schema_http_only=False,
    ),
    Way(
        "telegram-patch",
        "config.api_base",
        Integration,
        _patch("telegram"),
        200,
        0,
        patches="telegram",
    ),
    Way(
        "zendesk-patch",
        "config.base_url",
        Integration,
        _patch("zendesk"),
        200,
        0,
        patches="zendesk",
    ),
    Way(
        "generic-patch",
        "config.write_back.url",
        Integration,
        _patch("generic"),
        200,
        0,
        schema_http_only=False,
        patches="generic",
    ),
]


@pytest.fixture(scope="module")
def api_only(module_stacks: StackFactory, redis_url: str) -> Stack:
    """An API without workers, API keys on, the default policy (127.0.0.1 allowed)."""
    return module_stacks(redis_url, workers=0, api_keys=KEYS)


@pytest.fixture(scope="module")
def client(api_only: Stack) -> Iterator[httpx.Client]:
    with api_only.client(headers=A) as c:
        yield c


@pytest.fixture(scope="module")
def db(pg_url: str) -> Iterator[sessionmaker[Session]]:
    """Sessions on the stack's database (tables are not emptied: counts are compared)."""
    engine = make_engine(build_settings(database_url=pg_url), pool_size=2)
    yield make_sessionmaker(engine)
    engine.dispose()


@pytest.fixture(scope="module")
def existing(client: httpx.Client) -> dict[str, str]:
    """One integration of each kind, made with public URLs, for the PATCH cases: kind -> id."""
    ids = {}
    for kind, body in (
        ("telegram", telegram("https://api.example.com")),
        ("zendesk", zendesk("https://acme.example.com")),
        ("generic", generic("https://desk.example.com/api/tickets/{{ticket_id}}")),
    ):
        resp = client.post("/v1/integrations", json=body)
        assert resp.status_code == 201, resp.text
        ids[kind] = resp.json()["id"]
    return ids


def snapshot(db: sessionmaker[Session], way: Way, existing: dict[str, str]) -> Any:
    """What a refused request must leave as it was: the row count, and a patched row."""
    with db() as s:
        count = s.execute(select(func.count()).select_from(way.table)).scalar_one()
        if way.patches is None:
            return count
        row = s.get(Integration, existing[way.patches])
        assert row is not None
        return count, row.config, row.updated_at, row.enabled


def error(resp: httpx.Response, status: int, code: str) -> str:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and {"code", "message"} <= set(body["error"]), body
    assert body["error"]["code"] == code, body
    return str(body["error"]["message"])


@pytest.mark.parametrize("way", WAYS, ids=[w.id for w in WAYS])
@pytest.mark.parametrize(("url", "reason"), DENIED, ids=[u for u, _ in DENIED])
def test_an_internal_url_is_refused_and_nothing_stored(
    client: httpx.Client,
    db: sessionmaker[Session],
    existing: dict[str, str],
    way: Way,
    url: str,
    reason: str,
) -> None:
    before = snapshot(db, way, existing)
    resp = way.send(client, existing, url)
    if url.startswith(NOT_HTTP) and way.schema_http_only:
        message = error(resp, 422, "invalid_input")
        assert message.startswith(f"{way.field}: "), message
        assert "must be an http:// or https:// URL" in message, message
    else:
        message = error(resp, 422, "egress_denied")
        assert message == f"{way.field} {reason}", message
    assert snapshot(db, way, existing) == before


@pytest.mark.parametrize("way", WAYS, ids=[w.id for w in WAYS])
def test_a_public_url_is_accepted(
    client: httpx.Client, db: sessionmaker[Session], existing: dict[str, str], way: Way
) -> None:
    before = snapshot(db, way, existing)
    url = PUBLIC if way.patches != "generic" else PUBLIC + "/{{ticket_id}}"
    resp = way.send(client, existing, url)
    assert resp.status_code == way.accepted, resp.text
    after = snapshot(db, way, existing)
    if way.patches is None:
        assert after == before + way.rows
        return
    assert after[0] == before[0]
    config = after[1]
    stored = (
        config["write_back"]["url"]
        if way.patches == "generic"
        else next(v for k, v in config.items() if k in ("api_base", "base_url"))
    )
    assert stored.rstrip("/") == url.rstrip("/")
