"""Telegram: ``Update`` objects in (webhook or ``getUpdates``), ``sendMessage`` out.

Plain text goes to the model; ``/start`` and ``/help`` (and unknown commands) get the canned
texts at once; a message without text gets ``unsupported_text``; edited messages, channel
posts, callback queries and messages from bots are recorded and left alone.
"""

from __future__ import annotations

from typing import Any, cast

import httpx
import orjson

from app.errors import InvalidInput
from app.integrations.base import Finished, Outgoing, Plan, Reply, retry_after_header
from app.integrations.config import AnswerConfig, TelegramConfig
from app.integrations.mapping import heads

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
TELEGRAM_API = "https://api.telegram.org"
MAX_MESSAGE = 4096


def plan_update(update: Any, config: TelegramConfig, *, max_chars: int) -> Plan:
    """Decide what one ``Update`` asks of us; ``InvalidInput`` when it is not an Update."""
    if not isinstance(update, dict):
        raise InvalidInput("the body must be a Telegram Update object")
    uid = update.get("update_id")
    if isinstance(uid, bool) or not isinstance(uid, int):
        raise InvalidInput("update_id must be an integer")
    external = str(uid)
    kinds = [k for k in update if k != "update_id"]
    if "message" not in update:
        what = kinds[0] if kinds else "empty"
        return Plan(external, "ignored", {"type": what})
    msg = update["message"]
    chat = msg.get("chat") if isinstance(msg, dict) else None
    chat_id = chat.get("id") if isinstance(chat, dict) else None
    message_id = msg.get("message_id") if isinstance(msg, dict) else None
    if not isinstance(chat_id, int | str) or not isinstance(message_id, int):
        raise InvalidInput("message.chat.id and message.message_id are required")
    data = {"chat_id": chat_id, "message_id": message_id}
    sender = msg.get("from")
    if isinstance(sender, dict) and sender.get("is_bot"):
        return Plan(external, "ignored", {**data, "type": "from_bot"})
    text = msg.get("text")
    if not isinstance(text, str) or not text.strip():
        return Plan(external, "unsupported", data, reply=_send(data, config.unsupported_text))
    if text.startswith("/"):
        command = text.split()[0][1:].split("@")[0].lower()
        answer = config.start_text if command == "start" else config.help_text
        return Plan(external, "command", {**data, "command": command}, reply=_send(data, answer))
    return Plan(external, "message", {**data, "chars": len(text)}, text=text[:max_chars])


def _send(data: dict[str, Any], text: str) -> Reply:
    body = {
        "chat_id": data["chat_id"],
        "text": text[:MAX_MESSAGE],
        "reply_to_message_id": data["message_id"],
    }
    return Reply("sendMessage", "POST", "sendMessage", body)


def answer_text(output: dict[str, Any]) -> str:
    """``Category: billing (87%)`` / ``Urgency: high (64%)``, one line per label."""
    lines = []
    for head, label, score in heads(output):
        pct = "" if score is None else f" ({score:.0%})"
        lines.append(f"{head.replace('_', ' ').capitalize()}: {label.replace('_', ' ')}{pct}")
    return "\n".join(lines) or "I have no answer for that."


class TelegramConnector:
    """Replies with ``sendMessage`` on ``{api_base}/bot<token>/``."""

    def __init__(self, default_api_base: str = TELEGRAM_API) -> None:
        self.default_api_base = default_api_base.rstrip("/")

    def replies(self, config: AnswerConfig, data: dict[str, Any], done: Finished) -> list[Reply]:
        cfg = cast(TelegramConfig, config)
        if "chat_id" not in data:
            return []
        if done.status == "succeeded" and done.output is not None:
            return [_send(data, answer_text(done.output))]
        return [_send(data, cfg.failure_text)]

    def base(self, config: TelegramConfig) -> str:
        return config.api_base or self.default_api_base

    def request(self, config: AnswerConfig, secrets: dict[str, str], reply: Reply) -> Outgoing:
        cfg = cast(TelegramConfig, config)
        return Outgoing(
            reply.method,
            f"{self.base(cfg)}/bot{secrets['token']}/{reply.target}",
            {"Content-Type": "application/json"},
            orjson.dumps(reply.body),
        )

    def retry_after(self, response: httpx.Response) -> float | None:
        """Telegram says ``{"parameters": {"retry_after": N}}``; a header is honoured too."""
        try:
            params = response.json().get("parameters") or {}
            value = params.get("retry_after")
            if isinstance(value, int | float) and not isinstance(value, bool):
                return max(0.0, float(value))
        except (ValueError, AttributeError):
            pass
        return retry_after_header(response)
