"""Provider choice: CUDA when this ONNX Runtime build and the host have it, CPU otherwise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import orjson
import pytest

from app.registry import Registry
from app.runtime.adapters import load_adapter
from app.runtime.session import CPU, CUDA, choose_providers

HAS_CUDA = CUDA in ort.get_available_providers()


def test_cpu_is_always_there() -> None:
    assert choose_providers()[-1] == CPU
    assert choose_providers([CPU]) == [CPU]


def test_asking_for_a_missing_provider_falls_back_to_cpu() -> None:
    if HAS_CUDA:
        pytest.skip("this host has CUDA")
    assert choose_providers([CUDA]) == [CPU]
    assert choose_providers() == [CPU]


def test_cpu_session_runs_the_demo_models(models_dir: Path) -> None:
    reg = Registry(models_dir)
    emb = load_adapter(reg.get("minilm-embed"), providers=[CPU])
    assert emb.session.get_providers() == [CPU]  # type: ignore[attr-defined]
    out = emb.run(emb.prepare([{"text": "short"}, {"text": "a somewhat longer sentence here"}]))
    vecs = np.asarray([o["embedding"] for o in out])
    assert vecs.shape == (2, 384)
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-4)
    # what workers store: each float32 as its shortest text, read back to the very same float32
    text = orjson.dumps(out[0], option=orjson.OPT_SERIALIZE_NUMPY)
    back = np.asarray(orjson.loads(text)["embedding"], dtype=np.float32)
    assert np.array_equal(back, out[0]["embedding"])
    assert len(text) < 384 * 13  # float64 repr of the same values takes ~19 characters each


def test_padding_does_not_change_an_embedding(models_dir: Path) -> None:
    """A text batched with a longer one gets (nearly) the same vector as alone."""
    emb = load_adapter(Registry(models_dir).get("minilm-embed"))
    alone = np.asarray(emb.run(emb.prepare([{"text": "refund please"}]))[0]["embedding"])
    batch = emb.prepare([{"text": "refund please"}, {"text": "word " * 100}])
    padded = np.asarray(emb.run(batch)[0]["embedding"])
    assert float(alone @ padded) > 0.99999


@pytest.mark.gpu
@pytest.mark.skipif(
    not HAS_CUDA, reason="no CUDAExecutionProvider here (install onnxruntime-gpu on a GPU host)"
)
def test_cuda_session_matches_cpu(models_dir: Path) -> None:
    reg = Registry(models_dir)
    texts = [{"text": t} for t in ("my invoice is wrong", "the app crashes on start", "hello")]
    cpu = load_adapter(reg.get("minilm-embed"), providers=[CPU])
    gpu = load_adapter(reg.get("minilm-embed"), providers=[CUDA, CPU])
    assert gpu.session.get_providers()[0] == CUDA  # type: ignore[attr-defined]
    a = np.asarray([o["embedding"] for o in cpu.run(cpu.prepare(texts))])
    b = np.asarray([o["embedding"] for o in gpu.run(gpu.prepare(texts))])
    assert np.min(np.sum(a * b, axis=1)) > 0.9999
