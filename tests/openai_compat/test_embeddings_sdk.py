"""``POST /v1/embeddings`` through the official ``openai`` package against a running stack (API
and worker processes on real Postgres and Redis): one string, a list, base64 equal to inferq's
own ``/v1/predictions`` output, and the SDK's own exceptions for what is refused."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import httpx
import numpy as np
import openai
import orjson
import pytest

from tests.conftest import Stack, StackFactory

pytestmark = pytest.mark.slow

KEYS = {"key-a": "tenant-a", "key-b": "tenant-b"}
TEXTS = ["The printer on the third floor is on fire.", "How do I reset my password?"]


@pytest.fixture(scope="module")
def stack(module_stacks: StackFactory, redis_url: str) -> Stack:
    return module_stacks(redis_url, api_keys=orjson.dumps(KEYS).decode())


@pytest.fixture(scope="module")
def idle(module_stacks: StackFactory, redis_url: str) -> Stack:
    """No worker: nothing runs, so every wait times out."""
    return module_stacks(redis_url, workers=0, openai_timeout_seconds=1)


@pytest.fixture
def client(stack: Stack) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key="key-a", max_retries=0) as c:
        yield c


def inferq_vector(stack: Stack, text: str) -> np.ndarray:
    r = httpx.post(
        f"{stack.base_url}/v1/predictions",
        json={"model": "minilm-embed", "input": {"text": text}},
        headers={"Authorization": "Bearer key-a", "Prefer": "wait=20"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return np.asarray(r.json()["output"]["embedding"], dtype=np.float32)


def test_one_string_a_list_and_base64_equal_inferqs_own_output(
    stack: Stack, client: openai.OpenAI
) -> None:
    one = client.embeddings.create(model="minilm-embed", input=TEXTS[0], user="alice")
    assert one.object == "list" and one.model == "minilm-embed"
    assert [d.index for d in one.data] == [0] and len(one.data[0].embedding) == 384
    # real token counts: the model's tokenizer, [CLS] and [SEP] included
    assert 10 < one.usage.prompt_tokens == one.usage.total_tokens < 20

    # one Idempotency-Key: the same predictions answer all three, whatever the encoding
    same = {"Idempotency-Key": "three-ways"}
    floats = client.embeddings.create(
        model="minilm-embed", input=TEXTS, encoding_format="float", extra_headers=same
    )
    assert [d.index for d in floats.data] == [0, 1]
    assert floats.usage.prompt_tokens > one.usage.prompt_tokens
    b64 = client.embeddings.create(
        model="minilm-embed", input=TEXTS, encoding_format="base64", extra_headers=same
    )
    # without encoding_format the SDK asks for base64 itself and decodes it
    decoded = client.embeddings.create(model="minilm-embed", input=TEXTS, extra_headers=same)
    own = [inferq_vector(stack, t) for t in TEXTS]
    for i, ref in enumerate(own):
        vec = np.float32(floats.data[i].embedding)
        raw = base64.b64decode(b64.data[i].embedding)  # type: ignore[arg-type]
        np.testing.assert_array_equal(np.frombuffer(raw, dtype="<f4"), vec)  # bit for bit
        np.testing.assert_array_equal(np.float32(decoded.data[i].embedding), vec)
        # inferq's own predictions of the same text ran in other batches (other padding):
        # equal to float32 precision
        np.testing.assert_allclose(vec, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.float32(one.data[0].embedding), own[0], rtol=1e-5, atol=1e-6)


def test_what_is_refused_raises_the_sdks_own_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as unknown:
        client.embeddings.create(model="no-such-model", input="hi")
    assert "no-such-model" in unknown.value.message
    assert unknown.value.body["code"] == "model_not_found"  # type: ignore[index]
    assert unknown.value.body["type"] == "invalid_request_error"  # type: ignore[index]

    with pytest.raises(openai.BadRequestError) as triage:
        client.embeddings.create(model="ticket-triage", input="hi")
    assert "text-classification" in triage.value.message

    with pytest.raises(openai.BadRequestError) as ids:
        client.embeddings.create(model="minilm-embed", input=[[101, 7592, 102]])
    assert "token ids" in ids.value.message
    assert ids.value.code == "token_input_not_supported"

    with pytest.raises(openai.BadRequestError) as dims:
        client.embeddings.create(model="minilm-embed", input="hi", dimensions=128)
    assert "384" in dims.value.message and dims.value.code == "dimensions_not_supported"
    # its own size is no shortening
    assert len(client.embeddings.create(model="minilm-embed", input="hi", dimensions=384).data)

    with pytest.raises(openai.BadRequestError) as empty:
        client.embeddings.create(model="minilm-embed", input="")
    assert "input must not be empty" in empty.value.message


def test_auth_and_raw_errors_are_openais_shape(stack: Stack) -> None:
    with (
        openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key="wrong", max_retries=0) as c,
        pytest.raises(openai.AuthenticationError) as bad,
    ):
        c.embeddings.create(model="minilm-embed", input="hi")
    assert bad.value.code == "invalid_api_key"
    r = httpx.post(
        f"{stack.base_url}/v1/embeddings",
        content=b'{"model": "minilm-embed", "input": "x", "temperature": 1}',
        headers={"Authorization": "Bearer key-a"},
    )
    assert r.status_code == 400
    assert r.json() == {
        "error": {
            "message": "Unrecognized request argument supplied: temperature",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_input",
        }
    }
    # the rest of the API keeps inferq's shape
    r = httpx.get(f"{stack.base_url}/v1/jobs/nope", headers={"Authorization": "Bearer key-a"})
    assert set(r.json()["error"]) == {"code", "message"}


def test_a_timeout_is_answered_in_openais_shape_and_the_work_is_kept(idle: Stack) -> None:
    with (
        openai.OpenAI(base_url=f"{idle.base_url}/v1", api_key="x", max_retries=0) as c,
        pytest.raises(openai.InternalServerError) as late,
    ):
        c.embeddings.create(model="minilm-embed", input="nobody runs this")
    assert late.value.status_code == 504 and late.value.code == "timeout"
    assert late.value.response.headers["x-should-retry"] == "false"
    r = httpx.post(
        f"{idle.base_url}/v1/embeddings",
        json={"model": "minilm-embed", "input": "kept"},
        headers={"Idempotency-Key": "same-one"},
        timeout=10,
    )
    assert r.status_code == 504 and r.headers["x-should-retry"] == "true"
    assert r.json()["error"]["type"] == "server_error"
