"""minilm-embed:1-int8: close to fp32, recorded honestly, smaller."""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import Tokenizer

from app.modelbuild.common import cosine_rows, ort_session
from app.modelbuild.minilm import run_text
from app.registry import Manifest

pytestmark = pytest.mark.timeout(600)

TEXTS = [
    "I was charged twice this month and need a refund.",
    "Our dashboard has been down since this morning, please help ASAP.",
    "Could you add an export to Excel? No rush.",
    "My parcel was marked as delivered but it never arrived.",
]


def test_int8_cosine_is_recorded_and_high(manifests: dict[str, Manifest]) -> None:
    metrics = manifests["minilm-embed:1-int8"].metrics
    assert metrics["cosine_to_fp32_min"] >= 0.98
    assert metrics["cosine_to_fp32_mean"] >= 0.99
    assert metrics["cosine_eval_texts"] >= 24
    assert metrics["cosine_to_fp32_min_very_short"] >= 0.95
    assert metrics["size_bytes"] < metrics["fp32_size_bytes"] / 2


def test_int8_embeddings_are_close_to_fp32(built_dir: Path) -> None:
    fp32 = built_dir / "minilm-embed" / "1"
    int8 = built_dir / "minilm-embed" / "1-int8"
    tokenizer = Tokenizer.from_file(str(int8 / "tokenizer.json"))
    (a,) = run_text(ort_session(fp32 / "model.onnx"), tokenizer, TEXTS)
    (b,) = run_text(ort_session(int8 / "model.onnx"), tokenizer, TEXTS)
    assert cosine_rows(a, b).min() >= 0.98
