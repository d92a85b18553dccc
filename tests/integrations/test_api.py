"""``/v1/integrations``: validation, write-only secrets, tenants, settings-made integrations,
and the sweeper's repair of an answer whose write hook did not run."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from app.db.base import new_id, utcnow
from app.db.deliveries import Delivery
from app.db.engine import session_scope
from app.db.integrations import IntegrationEvent
from app.db.models import Prediction
from app.delivery import outbox as delivery_outbox
from app.delivery.engine import build_dispatcher
from app.integrations import outbox, store
from app.integrations.config import IntegrationSettings
from app.integrations.secrets import SecretBox
from app.settings import build_settings
from tests.integrations.conftest import TOKEN, WEBHOOK_SECRET, Hooks
from tests.support.receiver import Receiver

pytestmark = pytest.mark.slow

BOT = {
    "kind": "telegram",
    "name": "helpdesk bot",
    "config": {"api_base": "http://127.0.0.1:9"},
    "secrets": {"token": TOKEN, "webhook_secret": WEBHOOK_SECRET},
}


def error(resp: Any, status: int) -> dict[str, str]:
    assert resp.status_code == status, resp.text
    body: dict[str, str] = resp.json()["error"]
    return body


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({**BOT, "kind": "slack"}, "kind: Input should be 'telegram', 'zendesk' or 'generic'"),
        ({**BOT, "name": ""}, "name: String should have at least 1 character"),
        ({**BOT, "colour": "red"}, "colour: Extra inputs are not permitted"),
        ({**BOT, "secrets": {"token": TOKEN}}, "secrets.webhook_secret is required"),
        ({**BOT, "secrets": {**BOT["secrets"], "token": "nope"}}, "secrets.token is not valid"),
        ({**BOT, "secrets": {**BOT["secrets"], "token": 5}}, "secrets.token must be a string"),
        ({**BOT, "config": {"api_base": "mailto:x"}}, "config.api_base: Value error, must be"),
        ({**BOT, "config": {"model": "minilm-embed"}}, "is a text-embedding model"),
        ({**BOT, "config": {"model": "gpt-9"}}, "unknown model 'gpt-9'"),
        ({"kind": "zendesk", "name": "z", "config": {}}, "config.base_url: Field required"),
    ],
)
def test_create_refuses_bad_integrations(hooks: Hooks, body: dict, message: str) -> None:
    err = error(hooks.client.post("/v1/integrations", json=body), 422)
    assert err["code"] in ("invalid_input", "unknown_model")
    assert message in err["message"]
    assert TOKEN not in err["message"]


def test_secrets_are_write_only_and_tenants_are_apart(hooks: Hooks) -> None:
    created = hooks.create(**BOT)
    iid = created["id"]
    assert created["secrets"] == {"token": "set", "webhook_secret": "set"}
    assert created["activity"] == {"events": {}, "deliveries": {}, "recent": []}
    listing = hooks.client.get("/v1/integrations")
    assert [i["id"] for i in listing.json()["integrations"]] == [iid]
    assert TOKEN not in listing.text and WEBHOOK_SECRET not in listing.text
    assert error(hooks.client.post("/v1/integrations", json=BOT), 409)["code"] == "name_taken"

    other = {"Authorization": "Bearer key-globex"}
    assert hooks.client.get("/v1/integrations", headers=other).json() == {"integrations": []}
    for method in ("GET", "PATCH", "DELETE"):
        resp = hooks.client.request(
            method, f"/v1/integrations/{iid}", headers=other, json={"enabled": False}
        )
        assert error(resp, 404)["code"] == "not_found"
    anonymous = httpx.get(f"{hooks.stack.base_url}/v1/integrations", timeout=10)
    assert error(anonymous, 401)["code"] == "unauthorized"

    # rotate the webhook secret: the old one stops working at once
    patched = hooks.client.patch(
        f"/v1/integrations/{iid}", json={"secrets": {"webhook_secret": "rotated_1"}}
    )
    assert patched.status_code == 200 and "rotated_1" not in patched.text
    hook = f"/hooks/telegram/{iid}"
    update_ = {"update_id": 1, "edited_message": {"message_id": 1, "chat": {"id": 1}}}
    old = hooks.client.post(
        hook, json=update_, headers={"X-Telegram-Bot-Api-Secret-Token": WEBHOOK_SECRET}
    )
    assert old.status_code == 401
    new = hooks.client.post(
        hook, json=update_, headers={"X-Telegram-Bot-Api-Secret-Token": "rotated_1"}
    )
    assert new.json()["status"] == "ignored"

    off = hooks.client.patch(f"/v1/integrations/{iid}", json={"enabled": False, "name": "off"})
    assert off.json()["enabled"] is False and off.json()["name"] == "off"
    update_["update_id"] = 2
    disabled = hooks.client.post(
        hook, json=update_, headers={"X-Telegram-Bot-Api-Secret-Token": "rotated_1"}
    )
    assert disabled.status_code == 200 and disabled.json()["status"] == "disabled"
    bad = hooks.client.patch(f"/v1/integrations/{iid}", json={"config": {"priority": "asap"}})
    assert "config.priority" in error(bad, 422)["message"]

    assert hooks.client.delete(f"/v1/integrations/{iid}").json() == {"id": iid, "deleted": True}
    assert error(hooks.client.get(f"/v1/integrations/{iid}"), 404)["code"] == "not_found"
    assert hooks.counts() == (0, 0, 0)


def test_integrations_from_settings_are_read_only(hooks: Hooks) -> None:
    isettings = IntegrationSettings(
        integrations=[{"id": "ops-bot", "tenant": "acme", "kind": "telegram", **BOT}],
        secrets_key="integration tests passphrase",
    )
    box = SecretBox([isettings.secrets_key])
    assert store.sync_settings(sessions=hooks.sessions, box=box, isettings=isettings) == ["ops-bot"]
    again = store.sync_settings(sessions=hooks.sessions, box=box, isettings=isettings)
    assert again == ["ops-bot"]  # idempotent
    got = hooks.detail("ops-bot")
    assert got["source"] == "settings" and got["name"] == "helpdesk bot"
    err = error(hooks.client.patch("/v1/integrations/ops-bot", json={"enabled": False}), 409)
    assert err["code"] == "read_only" and "INFERQ_INTEGRATIONS" in err["message"]
    assert error(hooks.client.delete("/v1/integrations/ops-bot"), 409)["code"] == "read_only"
    # the API process decrypts what this process sealed with the same key
    hook = hooks.client.post(
        "/hooks/telegram/ops-bot",
        json={"update_id": 3, "channel_post": {}},
        headers={"X-Telegram-Bot-Api-Secret-Token": WEBHOOK_SECRET},
    )
    assert hook.json()["status"] == "ignored"
    broken = IntegrationSettings(integrations=[{"id": "x y", "kind": "telegram"}])
    with pytest.raises(Exception, match=r"INFERQ_INTEGRATIONS\[0\]\.id must match"):
        store.sync_settings(sessions=hooks.sessions, box=box, isettings=broken)


def test_sweep_answers_events_whose_hook_did_not_run(hooks: Hooks, receiver: Receiver) -> None:
    """A prediction finished while the write hook failed: the sweep step makes the answer
    (``reconcile``) and sends what is due (``due``)."""
    iid = hooks.create(**{**BOT, "config": {"api_base": receiver.url}})["id"]
    pid, eid = new_id("pred"), new_id("iev")
    output = {"category": "billing", "category_scores": {"billing": 0.9}}
    with session_scope(hooks.sessions) as s:
        s.add(
            Prediction(
                id=pid,
                tenant="acme",
                model="ticket-triage",
                model_version="1",
                status="succeeded",
                priority=1,
                input={"text": "x"},
                output=output,
                created_at=utcnow(),
                attempts=1,
            )
        )
        s.flush()
        s.add(
            IntegrationEvent(
                id=eid,
                integration_id=iid,
                tenant="acme",
                external_id="99",
                kind="message",
                status="queued",
                data={"chat_id": 5, "message_id": 6},
                prediction_id=pid,
                created_at=utcnow(),
            )
        )
    with session_scope(hooks.sessions) as s:
        made = outbox.reconcile(s)
    with session_scope(hooks.sessions) as s:
        assert outbox.reconcile(s) == []  # once
        (delivery,) = s.query(Delivery).all()
        event = s.get(IntegrationEvent, eid)
        assert event is not None and event.status == "done"
    assert made == [delivery.id]
    assert delivery.body == {
        "chat_id": 5,
        "text": "Category: billing (90%)",
        "reply_to_message_id": 6,
    }
    isettings = IntegrationSettings(secrets_key="integration tests passphrase")
    sender = build_dispatcher(
        hooks.sessions, build_settings(egress_allow=["127.0.0.1"]), isettings=isettings
    )
    try:
        assert due(hooks.sessions) == [delivery.id]
        assert sender.sweep() == 1
        (sent,) = receiver.wait_for(lambda rs: len(rs) >= 1)
    finally:
        sender.close()
    assert sent.path == f"/bot{TOKEN}/sendMessage" and sent.json() == delivery.body
    assert due(hooks.sessions) == []


def due(sessions: Any) -> list[str]:
    with session_scope(sessions) as s:
        return delivery_outbox.due(session=s)
