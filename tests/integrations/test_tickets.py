"""Help desks end to end: signed tickets in, triage written back to a loopback help desk."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from tests.integrations.conftest import API_TOKEN, SIGNING_SECRET, Hooks
from tests.support.receiver import Received, Receiver

pytestmark = pytest.mark.slow

EMAIL = "triage-bot@acme.example"
URGENCY_TO_PRIORITY = {"low": "low", "normal": "normal", "high": "high", "urgent": "urgent"}


def make_zendesk(hooks: Hooks, receiver: Receiver) -> str:
    body = hooks.create(
        kind="zendesk",
        name="acme-zendesk",
        config={"base_url": receiver.url, "email": EMAIL},
        secrets={"signing_secret": SIGNING_SECRET, "api_token": API_TOKEN},
    )
    assert body["hook_path"] == f"/hooks/tickets/{body['id']}"
    return str(body["id"])


def created_event(ticket_id: int, subject: str, description: str) -> dict[str, Any]:
    """A Zendesk ``ticket.created`` event-subscription payload."""
    return {
        "type": "zen:event-type:ticket.created",
        "account_id": 88888888,
        "id": f"01HN{ticket_id:08d}",
        "time": "2026-11-25T12:00:00Z",
        "zendesk_event_version": "2022-11-06",
        "subject": f"zen:ticket:{ticket_id}",
        "detail": {
            "id": str(ticket_id),
            "subject": subject,
            "description": description,
            "status": "NEW",
            "priority": None,
            "via": {"channel": "web"},
        },
        "event": {},
    }


def signed(body: bytes, secret: str = SIGNING_SECRET, age_s: float = 0) -> dict[str, str]:
    ts = (datetime.now(UTC) - timedelta(seconds=age_s)).strftime("%Y-%m-%dT%H:%M:%SZ")
    mac = hmac.new(secret.encode(), ts.encode() + body, hashlib.sha256).digest()
    return {
        "Content-Type": "application/json",
        "X-Zendesk-Webhook-Signature": base64.b64encode(mac).decode(),
        "X-Zendesk-Webhook-Signature-Timestamp": ts,
    }


def send(hooks: Hooks, integration: str, payload: Any, **sign: Any) -> Any:
    body = orjson.dumps(payload)
    return hooks.client.post(
        f"/hooks/tickets/{integration}", content=body, headers=signed(body, **sign)
    )


def puts(requests: list[Received]) -> list[Received]:
    return [r for r in requests if r.method == "PUT"]


def test_a_zendesk_ticket_is_triaged_and_updated(hooks: Hooks, receiver: Receiver) -> None:
    zd = make_zendesk(hooks, receiver)
    resp = send(
        hooks,
        zd,
        created_event(35436, "Charged twice", "My card was billed twice for the same invoice."),
    )
    assert resp.status_code == 202, resp.text
    assert resp.json()["status"] == "queued"
    pid = resp.json()["prediction_id"]
    trigger = {"ticket": {"id": 35437, "title": "Cannot log in", "description": "2FA fails"}}
    assert send(hooks, zd, trigger).status_code == 202

    got = puts(receiver.wait_for(lambda rs: len(puts(rs)) >= 2))
    by_path = {r.path: r for r in got}
    put = by_path["/api/v2/tickets/35436.json"]
    assert "/api/v2/tickets/35437.json" in by_path
    expected = base64.b64encode(f"{EMAIL}/token:{API_TOKEN}".encode()).decode()
    assert put.headers["authorization"] == f"Basic {expected}"
    output = hooks.client.get(f"/v1/predictions/{pid}").json()["output"]
    ticket = put.json()["ticket"]
    assert ticket["additional_tags"] == [
        "inferq",
        f"inferq_{output['category']}",
        f"inferq_urgency_{output['urgency']}",
    ]
    assert ticket["priority"] == URGENCY_TO_PRIORITY[output["urgency"]]
    assert ticket["comment"]["public"] is False
    assert ticket["comment"]["body"].startswith("inferq triage: category: ")
    assert pid in ticket["comment"]["body"]


def test_bad_signatures_are_refused_and_nothing_stored(hooks: Hooks, receiver: Receiver) -> None:
    zd = make_zendesk(hooks, receiver)
    payload = created_event(1, "Refund", "please")
    body = orjson.dumps(payload)
    cases = [
        ({"Content-Type": "application/json"}, "missing X-Zendesk-Webhook-Signature"),
        (signed(body, secret="wrong-secret"), "does not match"),
        ({**signed(body), "X-Zendesk-Webhook-Signature": "bm9wZQ=="}, "does not match"),
        (signed(body, age_s=900), "refusing a replay"),
    ]
    for headers, message in cases:
        resp = hooks.client.post(f"/hooks/tickets/{zd}", content=body, headers=headers)
        assert resp.status_code == 401, resp.text
        assert resp.json()["error"]["code"] == "unauthorized"
        assert message in resp.json()["error"]["message"]
    tampered = hooks.client.post(
        f"/hooks/tickets/{zd}", content=body.replace(b"Refund", b"Refunx"), headers=signed(body)
    )
    assert tampered.status_code == 401
    no_ticket = send(hooks, zd, {"hello": "world"})
    assert no_ticket.status_code == 422
    assert no_ticket.json()["error"]["message"].startswith("no ticket in the body")
    other_event = send(hooks, zd, {"type": "zen:event-type:ticket.status_changed"})
    assert other_event.status_code == 200 and other_event.json()["status"] == "ignored"
    assert send(hooks, "itg_missing", payload).status_code == 404
    assert hooks.counts() == (0, 0, 0)
    assert receiver.requests == []


def test_a_ticket_seen_twice_is_triaged_once(hooks: Hooks, receiver: Receiver) -> None:
    zd = make_zendesk(hooks, receiver)
    first = send(hooks, zd, created_event(77, "Parcel lost", "Tracking stuck for a week"))
    assert first.json()["status"] == "queued"
    again = send(hooks, zd, {"ticket": {"id": "77", "subject": "Parcel lost"}})
    assert again.status_code == 200 and again.json() == {"ok": True, "status": "duplicate"}
    receiver.wait_for(lambda rs: len(puts(rs)) >= 1)
    time.sleep(1.0)
    assert len(puts(receiver.requests)) == 1
    assert hooks.counts() == (1, 1, 1)


def test_help_desk_down_then_back(hooks: Hooks, receiver: Receiver) -> None:
    zd = make_zendesk(hooks, receiver)
    receiver.fail_next, receiver.fail_status = 3, 503
    send(hooks, zd, created_event(90, "App crashes", "The app crashes on start since the update"))
    receiver.wait_for(lambda rs: len(puts(rs)) >= 4, timeout=20)
    end = time.monotonic() + 10
    while True:
        (event,) = hooks.detail(zd)["activity"]["recent"]
        (delivery,) = event["deliveries"]
        if delivery["status"] != "pending" or time.monotonic() > end:
            break
        time.sleep(0.1)
    assert delivery["status"] == "delivered" and delivery["attempts"] == 4
    assert [a["status_code"] for a in delivery["attempt_log"]] == [503, 503, 503, 200]
    gaps = [a["at"] for a in delivery["attempt_log"]]
    assert gaps == sorted(gaps)


GENERIC_CONFIG = {
    "id_field": "/data/ticket/id",
    "text_fields": ["data.ticket.title", "data.ticket.body"],
    "event_field": "event",
    "event_values": ["ticket.created"],
    "signature_header": "X-Desk-Signature",
    "signature_prefix": "sha256=",
    "write_back": {
        "url": "{receiver}/api/tickets/{{ticket_id}}",
        "method": "PATCH",
        "body": {"labels": "{{tags}}", "priority": "{{priority}}", "internal_note": "{{note}}"},
        "headers": {"Authorization": "Bearer {{secret.api_token}}"},
    },
}


def test_generic_adapter_maps_fields_and_writes_back(hooks: Hooks, receiver: Receiver) -> None:
    config = orjson.loads(
        orjson.dumps(GENERIC_CONFIG).replace(b"{receiver}", receiver.url.encode())
    )
    desk = hooks.create(
        kind="generic",
        name="other-desk",
        config=config,
        secrets={"signing_secret": "desk-secret", "api_token": API_TOKEN},
    )["id"]

    def post(payload: dict[str, Any], secret: str = "desk-secret") -> Any:
        body = orjson.dumps(payload)
        mac = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        return hooks.client.post(
            f"/hooks/tickets/{desk}", content=body, headers={"X-Desk-Signature": f"sha256={mac}"}
        )

    ticket = {"id": "T-9", "title": "Invoice wrong", "body": "VAT is missing on my invoice"}
    assert post({"event": "ticket.created", "data": {"ticket": ticket}}, "nope").status_code == 401
    assert (
        post({"event": "ticket.updated", "data": {"ticket": ticket}}).json()["status"] == "ignored"
    )
    accepted = post({"event": "ticket.created", "data": {"ticket": ticket}})
    assert accepted.status_code == 202, accepted.text
    (patch,) = [r for r in receiver.wait_for(lambda rs: len(rs) >= 1) if r.method == "PATCH"]
    assert patch.path == "/api/tickets/T-9"
    assert patch.headers["authorization"] == f"Bearer {API_TOKEN}"
    body = patch.json()
    assert body["labels"][0] == "inferq" and body["priority"] in URGENCY_TO_PRIORITY
    assert body["internal_note"].startswith("inferq triage: category: ")
    missing = post({"event": "ticket.created", "data": {}})
    assert missing.status_code == 422
    assert missing.json()["error"]["message"] == "no ticket id at '/data/ticket/id'"
