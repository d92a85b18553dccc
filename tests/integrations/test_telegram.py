"""Telegram end to end: updates into the hook, real workers, replies to a loopback Bot API."""

from __future__ import annotations

import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import select

from app.db.deliveries import DeliveryAttempt
from app.db.integrations import Integration
from tests.integrations.conftest import TOKEN, WEBHOOK_SECRET, Hooks
from tests.support.procs import BIN, ROOT
from tests.support.receiver import Received, Receiver

pytestmark = pytest.mark.slow

SEND_PATH = f"/bot{TOKEN}/sendMessage"


def make_bot(hooks: Hooks, receiver: Receiver, **config: Any) -> str:
    body = hooks.create(
        kind="telegram",
        name="support-bot",
        config={"api_base": receiver.url, "model": "ticket-triage", **config},
        secrets={"token": TOKEN, "webhook_secret": WEBHOOK_SECRET},
    )
    assert body["secrets"] == {"token": "set", "webhook_secret": "set"}
    assert body["hook_path"] == f"/hooks/telegram/{body['id']}"
    return str(body["id"])


def update(
    uid: int, text: str | None = "I was charged twice for my subscription", **msg: Any
) -> dict:
    message: dict[str, Any] = {
        "message_id": 1000 + uid,
        "from": {"id": 42, "is_bot": False, "first_name": "Ann"},
        "chat": {"id": 777000 + uid, "type": "private"},
        "date": 1_700_000_000,
        **msg,
    }
    if text is not None:
        message["text"] = text
    return {"update_id": uid, "message": message}


def post(hooks: Hooks, bot: str, body: Any, secret: str | None = WEBHOOK_SECRET) -> Any:
    headers = {} if secret is None else {"X-Telegram-Bot-Api-Secret-Token": secret}
    return hooks.client.post(f"/hooks/telegram/{bot}", json=body, headers=headers)


def sends(requests: list[Received]) -> list[Received]:
    return [r for r in requests if r.path == SEND_PATH]


def test_a_message_gets_a_reply_in_its_chat(hooks: Hooks, receiver: Receiver) -> None:
    bot = make_bot(hooks, receiver)
    resp = post(hooks, bot, update(1, "Production is down and nobody can log in, help ASAP"))
    assert resp.status_code == 200, resp.text
    assert resp.json()["ok"] is True and resp.json()["status"] == "queued"
    pid = resp.json()["prediction_id"]

    (sent,) = sends(receiver.wait_for(lambda rs: len(sends(rs)) >= 1))
    body = sent.json()
    assert body["chat_id"] == 777001 and body["reply_to_message_id"] == 1001
    assert body["text"].startswith("Category: ") and "\nUrgency: " in body["text"]

    pred = hooks.client.get(f"/v1/predictions/{pid}").json()
    assert pred["status"] == "succeeded" and pred["metadata"]["integration"] == bot
    assert pred["output"]["urgency"] in body["text"]
    detail = _settled(hooks, bot)
    (event,) = detail["activity"]["recent"]
    assert (event["external_id"], event["kind"], event["status"]) == ("1", "message", "done")
    (delivery,) = event["deliveries"]
    assert delivery["status"] == "delivered" and delivery["attempts"] == 1
    assert delivery["attempt_log"][0]["status_code"] == 200
    assert detail["activity"]["deliveries"] == {"delivered": 1}


def _settled(hooks: Hooks, bot: str, timeout: float = 10) -> dict[str, Any]:
    """The integration once no delivery is pending any more."""
    end = time.monotonic() + timeout
    while True:
        detail = hooks.detail(bot)
        if "pending" not in detail["activity"]["deliveries"] or time.monotonic() > end:
            return detail
        time.sleep(0.1)


def test_wrong_or_missing_secret_is_refused_and_nothing_stored(
    hooks: Hooks, receiver: Receiver
) -> None:
    bot = make_bot(hooks, receiver)
    for secret, message in [
        ("not-the-secret", "does not match"),
        (None, "missing X-Telegram-Bot-Api-Secret-Token"),
        ("", "missing"),
    ]:
        resp = post(hooks, bot, update(5), secret=secret)
        assert resp.status_code == 401, resp.text
        assert resp.json()["error"]["code"] == "unauthorized"
        assert message in resp.json()["error"]["message"]
    unknown = post(hooks, "itg_nope", update(5))
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"
    bad = hooks.client.post(
        f"/hooks/telegram/{bot}",
        content=b"{not json",
        headers={"X-Telegram-Bot-Api-Secret-Token": WEBHOOK_SECRET},
    )
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_input"
    no_id = post(hooks, bot, {"message": {"text": "hi"}})
    assert no_id.status_code == 422
    assert no_id.json()["error"]["message"] == "update_id must be an integer"
    assert hooks.counts() == (0, 0, 0)
    time.sleep(0.5)
    assert receiver.requests == []


def test_the_same_update_twice_is_processed_once(hooks: Hooks, receiver: Receiver) -> None:
    bot = make_bot(hooks, receiver)
    first = post(hooks, bot, update(9))
    again = post(hooks, bot, update(9))
    assert first.json()["status"] == "queued"
    assert again.status_code == 200 and again.json() == {"ok": True, "status": "duplicate"}
    receiver.wait_for(lambda rs: len(sends(rs)) >= 1)
    late = post(hooks, bot, update(9))  # Telegram retrying after we answered
    assert late.json()["status"] == "duplicate"
    with ThreadPoolExecutor(6) as pool:  # a burst of redeliveries racing each other
        racing = list(pool.map(lambda _: post(hooks, bot, update(10)).json()["status"], range(6)))
    assert sorted(racing) == ["duplicate"] * 5 + ["queued"]
    receiver.wait_for(lambda rs: len(sends(rs)) >= 2)
    time.sleep(1.0)
    assert len(sends(receiver.requests)) == 2
    assert hooks.counts() == (2, 2, 2)


def test_commands_non_text_and_edits(hooks: Hooks, receiver: Receiver) -> None:
    bot = make_bot(hooks, receiver, start_text="Hello from the test bot")
    assert post(hooks, bot, update(20, "/start")).json()["status"] == "replied"
    assert post(hooks, bot, update(21, "/help@support_bot")).json()["status"] == "replied"
    photo = update(22, None, photo=[{"file_id": "abc", "width": 1, "height": 1}])
    assert post(hooks, bot, photo).json()["status"] == "replied"
    edited = {"update_id": 23, "edited_message": update(23)["message"]}
    assert post(hooks, bot, edited).json()["status"] == "ignored"
    callback = {"update_id": 24, "callback_query": {"id": "1", "data": "x"}}
    assert post(hooks, bot, callback).json()["status"] == "ignored"

    got = sends(receiver.wait_for(lambda rs: len(sends(rs)) >= 3))
    texts = {r.json()["reply_to_message_id"]: r.json()["text"] for r in got}
    assert texts[1020] == "Hello from the test bot"
    assert texts[1021].startswith("Send me the text of a support request")
    assert texts[1022] == "I can only read text messages."
    time.sleep(0.5)
    assert len(sends(receiver.requests)) == 3
    events, predictions, deliveries = hooks.counts()
    assert (events, predictions, deliveries) == (5, 0, 3)


def test_bot_api_down_for_a_while_then_delivered(hooks: Hooks, receiver: Receiver) -> None:
    bot = make_bot(hooks, receiver)
    receiver.fail_next = 3
    post(hooks, bot, update(30))
    got = sends(receiver.wait_for(lambda rs: len(sends(rs)) >= 4, timeout=20))
    assert [r.json()["chat_id"] for r in got] == [777030] * 4
    (event,) = _settled(hooks, bot)["activity"]["recent"]
    (delivery,) = event["deliveries"]
    assert delivery["status"] == "delivered" and delivery["attempts"] == 4
    codes = [a["status_code"] for a in delivery["attempt_log"]]
    assert codes == [500, 500, 500, 200]
    assert delivery["attempt_log"][0]["error"].startswith("answered 500")


def test_429_retry_after_is_honoured(hooks: Hooks, receiver: Receiver) -> None:
    bot = make_bot(hooks, receiver)
    answered: list[float] = []

    def flood(req: Received) -> tuple[int, Any] | None:
        answered.append(time.monotonic())
        if len(answered) == 1:
            return 429, {
                "ok": False,
                "error_code": 429,
                "description": "Too Many Requests: retry after 2",
                "parameters": {"retry_after": 2},
            }
        return 200, {"ok": True, "result": {"message_id": 1}}

    receiver.responder = flood
    post(hooks, bot, update(40))
    receiver.wait_for(lambda rs: len(sends(rs)) >= 2, timeout=20)
    assert answered[1] - answered[0] >= 1.9  # not the 0.2 s backoff
    (event,) = _settled(hooks, bot)["activity"]["recent"]
    log = event["deliveries"][0]["attempt_log"]
    assert [(a["status_code"], a["retry_after_s"]) for a in log] == [(429, 2.0), (200, None)]


def test_a_rejected_token_fails_without_leaking_it(hooks: Hooks, receiver: Receiver) -> None:
    bot = make_bot(hooks, receiver)
    receiver.responder = lambda req: (401, {"ok": False, "description": "Unauthorized"})
    post(hooks, bot, update(50))
    receiver.wait_for(lambda rs: len(sends(rs)) >= 1)
    (event,) = _settled(hooks, bot)["activity"]["recent"]
    (delivery,) = event["deliveries"]
    assert delivery["status"] == "dead" and delivery["attempts"] == 1  # 401 is final
    assert delivery["dead_reason"] == "rejected"
    assert delivery["last_error"] == 'answered 401: {"ok": false, "description": "Unauthorized"}'
    listing = hooks.client.get("/v1/integrations").text
    assert TOKEN not in listing and WEBHOOK_SECRET not in listing
    with hooks.sessions() as s:
        stored = s.scalars(select(Integration.secrets)).one()
        errors = s.scalars(select(DeliveryAttempt.error)).all()
    assert TOKEN not in stored and WEBHOOK_SECRET not in stored
    assert all(TOKEN not in (e or "") for e in errors)


def test_long_polling_forwards_updates_to_the_hook(hooks: Hooks, receiver: Receiver) -> None:
    bot = make_bot(hooks, receiver)
    calls: list[dict[str, Any]] = []

    def bot_api(req: Received) -> tuple[int, Any] | None:
        if req.path == f"/bot{TOKEN}/getUpdates":
            calls.append(req.json())
            fresh = [update(60, "My parcel never arrived")] if len(calls) == 1 else []
            return 200, {"ok": True, "result": fresh}
        return None

    receiver.responder = bot_api
    argv = [str(BIN / "inferq"), "telegram", "poll", "--bot", "support-bot", "--once"]
    proc = subprocess.run(
        [*argv, "--api", hooks.stack.base_url],
        env=dict(hooks.stack.env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "1 update(s) forwarded" in out and TOKEN not in out
    (sent,) = sends(receiver.wait_for(lambda rs: len(sends(rs)) >= 1))
    assert sent.json()["chat_id"] == 777060 and sent.json()["reply_to_message_id"] == 1060
    assert calls[0]["allowed_updates"] == ["message", "edited_message"]
    assert calls[-1]["offset"] == 61  # the update is confirmed to Telegram
    assert hooks.detail(bot)["activity"]["events"] == {"done": 1}
