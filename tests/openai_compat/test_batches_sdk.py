"""The Batch API through the official ``openai`` package against running stacks: upload, batch,
poll, output and error files in input order (a bad line fails alone), expiry past the
completion window (on read and by the sweeper's step), cancel, pagination, tenants, 413."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import openai
import orjson
import pytest
from sqlalchemy import select

from app.db.batches import Batch
from app.db.engine import make_engine, make_sessionmaker
from app.openai_compat.batch_life import sweep
from app.registry import Registry
from tests.conftest import Stack, StackFactory

pytestmark = pytest.mark.slow

KEYS = {"key-a": "tenant-a", "key-b": "tenant-b"}
MAX_FILE = 256 << 10


def request(cid: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"custom_id": cid, "method": "POST", "url": "/v1/embeddings", "body": body}


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(x) + b"\n" for x in lines)


LINES = [
    request("a", {"model": "minilm-embed", "input": "The first request."}),
    request("b", {"model": "minilm-embed", "input": ["two", "texts"], "encoding_format": "base64"}),
    request("bad", {"model": "minilm-embed", "input": ""}),
    request("c", {"model": "minilm-embed", "input": "The last one."}),
]


@pytest.fixture(scope="module")
def stack(module_stacks: StackFactory, redis_url: str) -> Stack:
    return module_stacks(redis_url, api_keys=orjson.dumps(KEYS).decode(), max_file_bytes=MAX_FILE)


@pytest.fixture(scope="module")
def idle(module_stacks: StackFactory, redis_url: str) -> Stack:
    """No worker, and a completion window of two seconds: nothing runs before it expires."""
    return module_stacks(redis_url, workers=0, batch_window_seconds=2)


def sdk(stack: Stack, key: str = "key-a") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=key, max_retries=0)


@pytest.fixture
def client(stack: Stack) -> Iterator[openai.OpenAI]:
    with sdk(stack) as c:
        yield c


def until(client: openai.OpenAI, batch_id: str, *states: str, timeout: float = 60) -> Any:
    end = time.monotonic() + timeout
    while True:
        b = client.batches.retrieve(batch_id)
        if b.status in states or time.monotonic() > end:
            return b
        time.sleep(0.2)


def lines_of(content: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(x) for x in content.splitlines()]


def test_the_whole_flow_with_one_bad_line(client: openai.OpenAI) -> None:
    f = client.files.create(file=("requests.jsonl", jsonl(LINES)), purpose="batch")
    assert f.object == "file" and f.purpose == "batch" and f.bytes == len(jsonl(LINES))
    assert client.files.content(f.id).content == jsonl(LINES)
    b = client.batches.create(
        input_file_id=f.id,
        endpoint="/v1/embeddings",
        completion_window="24h",
        metadata={"team": "search"},
    )
    assert b.status == "in_progress" and b.metadata == {"team": "search"}
    assert b.request_counts is not None and b.request_counts.total == 4

    b = until(client, b.id, "completed")
    assert b.status == "completed", b
    assert (b.request_counts.completed, b.request_counts.failed) == (3, 1)
    assert b.completed_at is not None and b.in_progress_at is not None

    out = lines_of(client.files.content(b.output_file_id).content)
    assert [x["custom_id"] for x in out] == ["a", "b", "c"]  # input order
    assert all(x["response"]["status_code"] == 200 and x["error"] is None for x in out)
    body_b = out[1]["response"]["body"]
    assert body_b["object"] == "list" and body_b["model"] == "minilm-embed"
    assert body_b["usage"]["prompt_tokens"] == 6  # [CLS] two [SEP], [CLS] texts [SEP]
    vecs = [np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in body_b["data"]]
    direct = client.embeddings.create(model="minilm-embed", input=["two", "texts"])
    for vec, d in zip(vecs, direct.data, strict=True):
        np.testing.assert_allclose(vec, np.float32(d.embedding), rtol=1e-5, atol=1e-6)
    assert len(out[0]["response"]["body"]["data"][0]["embedding"]) == 384  # floats

    (err,) = lines_of(client.files.content(b.error_file_id).content)
    assert err["custom_id"] == "bad" and err["error"] is None
    assert err["response"]["status_code"] == 400
    assert "line 3: input must not be empty" in err["response"]["body"]["error"]["message"]

    meta = client.files.retrieve(b.output_file_id)
    assert meta.bytes == len(client.files.content(b.output_file_id).content)
    assert meta.purpose == "batch_output"


def test_lines_of_every_kind_fail_alone(client: openai.OpenAI) -> None:
    lines = [
        jsonl([request("ok", {"model": "minilm-embed", "input": "fine"})]),
        b"this is not json\n",
        jsonl([request("other", {"model": "churn-risk", "input": "x"})]),
        jsonl([request("ok", {"model": "minilm-embed", "input": "again"})]),
        jsonl([{"custom_id": "url", "method": "POST", "url": "/v1/chat", "body": {}}]),
        jsonl([request("nomodel", {"model": "nope", "input": "x"})]),
        jsonl([request("ids", {"model": "minilm-embed", "input": [1, 2, 3]})]),
    ]
    f = client.files.create(file=("mixed.jsonl", b"".join(lines)), purpose="batch")
    b = client.batches.create(
        input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h"
    )
    b = until(client, b.id, "completed")
    assert (b.request_counts.total, b.request_counts.completed) == (7, 1)
    errs = lines_of(client.files.content(b.error_file_id).content)
    got = [(e["custom_id"], e["response"]["status_code"]) for e in errs]
    assert got == [
        (None, 400),
        ("other", 400),
        ("ok", 400),  # the repeated custom_id: the second line fails alone
        ("url", 400),
        ("nomodel", 404),
        ("ids", 400),
    ]
    messages = [e["response"]["body"]["error"]["message"] for e in errs]
    assert "not valid JSON" in messages[0] and "text-embedding" in messages[1]
    assert "repeats line 1" in messages[2] and "token ids" in messages[5]


def test_a_batch_with_no_valid_line_is_completed_at_once(client: openai.OpenAI) -> None:
    f = client.files.create(file=("bad.jsonl", b'{"custom_id": 1}\n'), purpose="batch")
    b = client.batches.create(
        input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h"
    )
    assert b.status == "completed" and b.output_file_id is None
    assert (b.request_counts.completed, b.request_counts.failed) == (0, 1)


def test_what_a_batch_refuses_whole(client: openai.OpenAI) -> None:
    f = client.files.create(file=("x.jsonl", jsonl(LINES)), purpose="batch")
    with pytest.raises(openai.BadRequestError, match="completion_window"):
        client.batches.create(input_file_id=f.id, endpoint="/v1/embeddings", completion_window="1h")  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError, match="endpoint"):
        client.batches.create(
            input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    with pytest.raises(openai.NotFoundError):
        client.batches.create(
            input_file_id="file-nope", endpoint="/v1/embeddings", completion_window="24h"
        )
    with pytest.raises(openai.BadRequestError, match="purpose"):
        client.files.create(file=("x.jsonl", b"{}\n"), purpose="fine-tune")
    with pytest.raises(openai.APIStatusError) as big:
        client.files.create(file=("big.jsonl", b"x" * (MAX_FILE + 1)), purpose="batch")
    assert big.value.status_code == 413
    assert big.value.body["type"] == "invalid_request_error"  # type: ignore[index]


def test_tenants_see_only_their_own_and_lists_page(stack: Stack, client: openai.OpenAI) -> None:
    f = client.files.create(file=("mine.jsonl", jsonl(LINES[:1])), purpose="batch")
    made = [
        client.batches.create(
            input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h"
        )
        for _ in range(3)
    ]
    with sdk(stack, "key-b") as other:
        for call in (
            lambda: other.files.retrieve(f.id),
            lambda: other.files.content(f.id),
            lambda: other.batches.retrieve(made[0].id),
            lambda: other.batches.cancel(made[0].id),
        ):
            with pytest.raises(openai.NotFoundError):
                call()
        assert other.batches.list().data == []
    first = client.batches.list(limit=2)
    assert [b.id for b in first.data] == [made[2].id, made[1].id]  # newest first
    assert first.has_more and first.last_id == made[1].id  # type: ignore[attr-defined]
    second = client.batches.list(limit=2, after=made[1].id)
    assert second.data[0].id == made[0].id
    seen = [b.id for b in client.batches.list(limit=1)]  # the SDK pages on by itself
    assert seen[:3] == [m.id for m in reversed(made)]


def test_the_window_expires_what_has_not_run(idle: Stack) -> None:
    with sdk(idle) as client:
        f = client.files.create(file=("late.jsonl", jsonl(LINES)), purpose="batch")
        b = client.batches.create(
            input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h"
        )
        assert b.expires_at - b.created_at == 2
        swept = client.batches.create(
            input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h"
        )
        time.sleep(2.2)
        b = client.batches.retrieve(b.id)  # moved on by this read
        assert b.status == "expired" and b.expired_at is not None and b.output_file_id is None
        assert (b.request_counts.completed, b.request_counts.failed) == (0, 4)
        errs = lines_of(client.files.content(b.error_file_id).content)
        assert [e["custom_id"] for e in errs] == ["a", "b", "bad", "c"]
        assert errs[0]["response"] is None and errs[0]["error"]["code"] == "batch_expired"
        assert errs[2]["response"]["status_code"] == 400  # refused before it could expire

    # nobody reads the other one: beat's step expires it
    engine = make_engine(idle.settings())
    try:
        sessions = make_sessionmaker(engine)
        assert sweep(sessions=sessions, registry=Registry(idle.settings().models_dir)) >= 1
        with sessions() as s:
            assert s.scalars(select(Batch.status).where(Batch.id == swept.id)).one() == "expired"
    finally:
        engine.dispose()


def test_cancel_ends_what_has_not_run(idle: Stack) -> None:
    with sdk(idle) as client:
        f = client.files.create(file=("stop.jsonl", jsonl(LINES)), purpose="batch")
        b = client.batches.create(
            input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h"
        )
        b = client.batches.cancel(b.id)
        assert b.status == "cancelled" and b.cancelling_at is not None
        errs = lines_of(client.files.content(b.error_file_id).content)
        assert {e["error"]["code"] for e in errs if e["error"]} == {"batch_cancelled"}
        with pytest.raises(openai.ConflictError):
            client.batches.cancel(b.id)
