"""The connectors' wire formats, signatures, templates and secrets: pure functions, no I/O."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from app.errors import InvalidInput, Unauthorized
from app.integrations import generic, telegram, zendesk
from app.integrations.base import Finished, retry_after_header
from app.integrations.config import (
    GenericConfig,
    TelegramConfig,
    ZendeskConfig,
    validate_config,
    validate_secrets,
)
from app.integrations.mapping import describe, lookup, render
from app.integrations.secrets import (
    MASK,
    RedactingFilter,
    SecretBox,
    SecretsUnreadable,
    redact,
)

TOKEN = "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsawq"
OUTPUT = {
    "category": "billing",
    "category_scores": {"billing": 0.87, "technical": 0.13},
    "urgency": "high",
    "urgency_scores": {"high": 0.64, "low": 0.36},
}


def tg_config() -> TelegramConfig:
    return TelegramConfig()


def message(update_id: int = 1, text: str | None = "I was charged twice", **extra: object) -> dict:
    msg: dict[str, object] = {"message_id": 55, "chat": {"id": -100, "type": "private"}, **extra}
    if text is not None:
        msg["text"] = text
    return {"update_id": update_id, "message": msg}


def test_plain_text_goes_to_the_model_and_is_truncated() -> None:
    plan = telegram.plan_update(message(text="x" * 50), tg_config(), max_chars=10)
    assert (plan.external_id, plan.kind, plan.text, plan.reply) == ("1", "message", "x" * 10, None)
    assert plan.data == {"chat_id": -100, "message_id": 55, "chars": 50}


@pytest.mark.parametrize(
    ("text", "expected"),
    [("/start", "start_text"), ("/help@SomeBot", "help_text"), ("/weird arg", "help_text")],
)
def test_commands_get_canned_replies(text: str, expected: str) -> None:
    cfg = tg_config()
    plan = telegram.plan_update(message(text=text), cfg, max_chars=100)
    assert plan.kind == "command" and plan.text is None and plan.reply is not None
    assert plan.reply.body == {
        "chat_id": -100,
        "text": getattr(cfg, expected),
        "reply_to_message_id": 55,
    }


def test_non_text_edited_and_other_updates() -> None:
    cfg = tg_config()
    photo = telegram.plan_update(message(text=None, photo=[{"file_id": "x"}]), cfg, max_chars=9)
    assert photo.kind == "unsupported" and photo.reply is not None
    assert photo.reply.body["text"] == cfg.unsupported_text
    edited = telegram.plan_update(
        {"update_id": 2, "edited_message": message()["message"]}, cfg, max_chars=9
    )
    assert (edited.kind, edited.reply, edited.text) == ("ignored", None, None)
    bot = telegram.plan_update(message(**{"from": {"id": 1, "is_bot": True}}), cfg, max_chars=9)
    assert bot.kind == "ignored"


@pytest.mark.parametrize(
    ("update", "error"),
    [
        ([], "Telegram Update object"),
        ({"message": {}}, "update_id must be an integer"),
        ({"update_id": True}, "update_id must be an integer"),
        ({"update_id": 1, "message": {"text": "hi"}}, "message.chat.id"),
    ],
)
def test_bad_updates_are_invalid_input(update: object, error: str) -> None:
    with pytest.raises(InvalidInput, match=error):
        telegram.plan_update(update, tg_config(), max_chars=9)


def test_telegram_reply_and_request_and_retry_after() -> None:
    conn = telegram.TelegramConnector("https://api.telegram.org")
    done = Finished("pred_1", "succeeded", "ticket-triage", "1", OUTPUT, None)
    (reply,) = conn.replies(tg_config(), {"chat_id": 5, "message_id": 9}, done)
    assert reply.body == {
        "chat_id": 5,
        "text": "Category: billing (87%)\nUrgency: high (64%)",
        "reply_to_message_id": 9,
    }
    out = conn.request(tg_config(), {"token": TOKEN, "webhook_secret": "s"}, reply)
    assert out.url == f"https://api.telegram.org/bot{TOKEN}/sendMessage"
    failed = Finished("pred_1", "failed", "ticket-triage", "1", None, "inference_failed")
    (sorry,) = conn.replies(tg_config(), {"chat_id": 5, "message_id": 9}, failed)
    assert sorry.body["text"] == tg_config().failure_text
    too_many = httpx.Response(429, json={"ok": False, "parameters": {"retry_after": 7}})
    assert conn.retry_after(too_many) == 7.0


def zendesk_headers(secret: str, body: bytes, when: datetime | None = None) -> dict[str, str]:
    ts = (when or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    sig = base64.b64encode(hmac.new(secret.encode(), ts.encode() + body, hashlib.sha256).digest())
    return {
        "x-zendesk-webhook-signature": sig.decode(),
        "x-zendesk-webhook-signature-timestamp": ts,
    }


def zd_config(**kw: object) -> ZendeskConfig:
    return ZendeskConfig.model_validate(
        {"base_url": "https://acme.zendesk.com/", "email": "a@b.c", **kw}
    )


def test_zendesk_signature() -> None:
    cfg, secrets, body = zd_config(), {"signing_secret": "shh", "api_token": "t"}, b'{"a":1}'
    zendesk.verify(cfg, secrets, zendesk_headers("shh", body), body)
    for headers, msg in [
        ({}, "missing"),
        (zendesk_headers("other", body), "does not match"),
        (zendesk_headers("shh", body + b" "), "does not match"),
        (zendesk_headers("shh", body, datetime.now(UTC) - timedelta(minutes=10)), "replay"),
    ]:
        with pytest.raises(Unauthorized, match=msg):
            zendesk.verify(cfg, secrets, headers, body)
    old = zendesk_headers("shh", body, datetime.now(UTC) - timedelta(days=1))
    zendesk.verify(zd_config(signature_tolerance_s=0), secrets, old, body)


def test_zendesk_payload_shapes_and_write_back() -> None:
    event = {
        "type": "zen:event-type:ticket.created",
        "detail": {"id": "35436", "subject": "Refund", "description": "Charged twice"},
    }
    plan = zendesk.plan_ticket(event)
    assert plan is not None and plan.external_id == "35436"
    assert plan.text == "Refund\n\nCharged twice"
    trigger = zendesk.plan_ticket({"ticket": {"id": 7, "title": "Down", "description": ""}})
    assert trigger is not None and (trigger.external_id, trigger.text) == ("7", "Down")
    assert zendesk.plan_ticket({"type": "zen:event-type:ticket.status_changed"}) is None
    with pytest.raises(InvalidInput, match="no ticket"):
        zendesk.plan_ticket({"hello": 1})
    with pytest.raises(InvalidInput, match="must be a number"):
        zendesk.plan_ticket({"ticket": {"id": "abc"}})

    conn = zendesk.ZendeskConnector()
    done = Finished("pred_1", "succeeded", "ticket-triage", "1", OUTPUT, None)
    (reply,) = conn.replies(zd_config(), {"ticket_id": "35436"}, done)
    assert (reply.method, reply.target) == ("PUT", "/api/v2/tickets/35436.json")
    ticket = reply.body["ticket"]
    assert ticket["additional_tags"] == ["inferq", "inferq_billing", "inferq_urgency_high"]
    assert ticket["priority"] == "high" and ticket["comment"]["public"] is False
    out = conn.request(zd_config(), {"signing_secret": "s", "api_token": "TOK"}, reply)
    assert out.url == "https://acme.zendesk.com/api/v2/tickets/35436.json"
    assert base64.b64decode(out.headers["Authorization"][6:]) == b"a@b.c/token:TOK"
    (replace,) = conn.replies(
        zd_config(replace_tags=True, set_priority=False), {"ticket_id": "1"}, done
    )
    assert "tags" in replace.body["ticket"] and "priority" not in replace.body["ticket"]
    failed = Finished("pred_1", "failed", "ticket-triage", "1", None, "x")
    assert conn.replies(zd_config(), {"ticket_id": "1"}, failed) == []


def generic_config(**kw: object) -> GenericConfig:
    base = {
        "id_field": "/data/ticket/id",
        "text_fields": ["data.ticket.title", "/data/ticket/body"],
        "event_field": "event",
        "event_values": ["ticket.created"],
        "signature_header": "X-Desk-Signature",
        "signature_prefix": "sha256=",
        "write_back": {
            "url": "https://desk.example.com/api/tickets/{{ticket_id}}",
            "method": "PATCH",
            "body": {"labels": "{{tags}}", "text": "{{category}}/{{urgency}}", "p": "{{priority}}"},
            "headers": {"Authorization": "Bearer {{secret.api_token}}"},
        },
    }
    cfg = validate_config("generic", {**base, **kw})
    assert isinstance(cfg, GenericConfig)
    return cfg


def test_generic_mapping_signature_and_render() -> None:
    cfg = generic_config()
    generic.check_templates(cfg)
    payload = {"event": "ticket.created", "data": {"ticket": {"id": 12, "title": "T", "body": "B"}}}
    plan = generic.plan_ticket(payload, cfg)
    assert plan is not None and (plan.external_id, plan.text) == ("12", "T\n\nB")
    assert generic.plan_ticket({**payload, "event": "ticket.updated"}, cfg) is None
    with pytest.raises(InvalidInput, match="no ticket id"):
        generic.plan_ticket({"event": "ticket.created"}, cfg)

    body = b'{"x": 1}'
    good = "sha256=" + hmac.new(b"k", body, hashlib.sha256).hexdigest()
    generic.verify(cfg, {"signing_secret": "k"}, {"x-desk-signature": good}, body)
    with pytest.raises(Unauthorized):
        generic.verify(cfg, {"signing_secret": "k"}, {"x-desk-signature": good[7:]}, body)

    done = Finished("pred_1", "succeeded", "ticket-triage", "1", OUTPUT, None)
    (reply,) = generic.GenericConnector().replies(cfg, {"ticket_id": "12"}, done)
    assert reply.target == "https://desk.example.com/api/tickets/12"
    assert reply.body == {
        "labels": ["inferq", "inferq_billing", "inferq_urgency_high"],
        "text": "billing/high",
        "p": "high",
    }
    out = generic.GenericConnector().request(cfg, {"signing_secret": "k", "api_token": "A"}, reply)
    assert out.headers["Authorization"] == "Bearer A" and out.method == "PATCH"


def test_generic_templates_are_checked() -> None:
    with pytest.raises(InvalidInput, match="unknown placeholder"):
        generic.check_templates(generic_config(write_back={"url": "https://x.io/{{nope}}"}))
    with pytest.raises(InvalidInput, match="only"):
        generic.check_templates(
            generic_config(write_back={"url": "https://x.io/", "headers": {"A": "{{ticket_id}}"}})
        )
    with pytest.raises(InvalidInput, match="secret"):
        generic.check_templates(generic_config(write_back={"url": "https://x/{{secret.a}}"}))


def test_lookup_and_render() -> None:
    doc = {"a": {"b/c": [10, {"d": "x"}]}, "e~f": 1}
    assert lookup(doc, "/a/b~1c/1/d") == "x" and lookup(doc, "/e~0f") == 1
    assert lookup(doc, "a.b/c.0") == 10 and lookup(doc, "a.zz") is None
    assert render({"k": ["{{n}}", "n={{n}}"]}, {"n": 3}) == {"k": [3, "n=3"]}
    assert describe(OUTPUT) == "category: billing (87%), urgency: high (64%)"


def test_config_and_secret_errors_name_the_field_not_the_value() -> None:
    with pytest.raises(InvalidInput, match=r"config\.api_base"):
        validate_config("telegram", {"api_base": "ftp://x"})
    with pytest.raises(InvalidInput, match=r"config\.surprise"):
        validate_config("telegram", {"surprise": 1})
    with pytest.raises(InvalidInput, match="kind must be one of"):
        validate_config("slack", {})
    with pytest.raises(InvalidInput, match=r"^secrets\.token is not valid$"):
        validate_secrets("telegram", {"token": "not a token", "webhook_secret": "ok"})
    with pytest.raises(InvalidInput, match=r"^secrets\.webhook_secret is required$"):
        validate_secrets("telegram", {"token": TOKEN})
    with pytest.raises(InvalidInput, match="not a secret of this kind"):
        validate_secrets("zendesk", {"signing_secret": "a", "api_token": "b", "x": "c"})


def test_secret_box_round_trip_rotation_and_wrong_key() -> None:
    old = SecretBox(["first passphrase"])
    sealed = old.seal({"token": TOKEN})
    assert TOKEN not in sealed
    rotated = SecretBox(["second passphrase", "first passphrase"])
    assert rotated.open(sealed) == {"token": TOKEN}
    assert SecretBox(["second passphrase"]).open(rotated.seal({"a": "b"})) == {"a": "b"}
    with pytest.raises(SecretsUnreadable):
        SecretBox(["another"]).open(sealed)


def test_redaction_of_text_and_log_records() -> None:
    url = f"POST https://api.telegram.org/bot{TOKEN}/sendMessage failed"
    assert TOKEN not in redact(url) and MASK in redact(url)
    assert redact("api key hunter22 leaked", ["hunter22"]) == f"api key {MASK} leaked"
    record = logging.LogRecord("httpx", logging.INFO, __file__, 1, "HTTP %s", (url,), None)
    record.url = url
    RedactingFilter().filter(record)
    assert TOKEN not in record.getMessage() and TOKEN not in record.url


def test_retry_after_header_seconds_and_date() -> None:
    assert retry_after_header(httpx.Response(429, headers={"Retry-After": "3"})) == 3.0
    later = (datetime.now(UTC) + timedelta(seconds=30)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    got = retry_after_header(httpx.Response(503, headers={"Retry-After": later}))
    assert got is not None and 25 <= got <= 31
    assert retry_after_header(httpx.Response(429)) is None
    assert retry_after_header(httpx.Response(429, headers={"Retry-After": "soon"})) is None
