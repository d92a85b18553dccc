"""``ticket-triage``: support-ticket category and urgency, as two linear heads on MiniLM.

Training data comes from :mod:`app.modelbuild.tickets` (seed ``TRAIN_SEED``, training phrase
pools); the frozen ``minilm-embed`` graph embeds it and two softmax-regression heads are fit
in torch. The exported graph is the whole thing, BERT + mean pooling + L2 normalisation +
both heads with softmax, so a worker needs one ONNX session and the shared tokenizer.
Accuracy is measured with that exported graph on the committed held-out file
``app/data/tickets_heldout.jsonl``, whose sentences the heads never saw.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.modelbuild import minilm, tickets
from app.modelbuild.common import (
    Progress,
    now_iso,
    ort_session,
    prepare_dir,
    seed_all,
    toolchain,
    torch_threads,
    write_manifest,
)
from app.registry import Manifest, file_sha256

NAME = "ticket-triage"
VERSION = "1"
TRAIN_SIZE = 1500
SEED = 1234
EPOCHS = 30
BATCH = 128
LR = 1e-2
WEIGHT_DECAY = 1e-2
LABEL_SMOOTHING = 0.05
OUTPUTS = ("category_probs", "urgency_probs")


class TriageModel(torch.nn.Module):
    """Encoder + category head + urgency head; probabilities out (softmax in the graph)."""

    def __init__(
        self, encoder: torch.nn.Module, category: torch.nn.Linear, urgency: torch.nn.Linear
    ):
        super().__init__()
        self.encoder = encoder
        self.category = category
        self.urgency = urgency

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.encoder(input_ids, attention_mask)
        return (
            torch.softmax(self.category(embedding), dim=-1),
            torch.softmax(self.urgency(embedding), dim=-1),
        )


def train_head(x: np.ndarray, y: np.ndarray, n_classes: int, seed: int) -> torch.nn.Linear:
    """Softmax regression on embeddings: AdamW, label smoothing, a fixed short schedule.

    Short training with weight decay is deliberate: longer fits memorise the training phrasings
    and lose accuracy on new ones. One thread, so the weights do not depend on the host.
    """
    with torch_threads(1):
        return _train_head(x, y, n_classes, seed)


def _train_head(x: np.ndarray, y: np.ndarray, n_classes: int, seed: int) -> torch.nn.Linear:
    torch.manual_seed(seed)
    head = torch.nn.Linear(x.shape[1], n_classes)
    optimizer = torch.optim.AdamW(head.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    features = torch.from_numpy(x.astype(np.float32))
    labels = torch.from_numpy(y.astype(np.int64))
    generator = torch.Generator().manual_seed(seed)
    head.train()
    for _ in range(EPOCHS):
        permutation = torch.randperm(len(features), generator=generator)
        for start in range(0, len(features), BATCH):
            idx = permutation[start : start + BATCH]
            loss = torch.nn.functional.cross_entropy(
                head(features[idx]), labels[idx], label_smoothing=LABEL_SMOOTHING
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    head.eval()
    for p in head.parameters():
        p.requires_grad_(False)
    return head


def _accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    return float((probs.argmax(axis=1) == labels).mean())


def _recall(probs: np.ndarray, labels: np.ndarray, names: tuple[str, ...]) -> dict[str, float]:
    predicted = probs.argmax(axis=1)
    return {
        name: round(float((predicted[labels == i] == i).mean()), 4)
        for i, name in enumerate(names)
        if (labels == i).any()
    }


def _labels(items: list[tickets.Ticket]) -> tuple[np.ndarray, np.ndarray]:
    cat = np.array([tickets.CATEGORIES.index(t.category) for t in items], dtype=np.int64)
    urg = np.array([tickets.URGENCIES.index(t.urgency) for t in items], dtype=np.int64)
    return cat, urg


def heldout_metrics(onnx_path: Path, heldout: list[tickets.Ticket]) -> dict[str, Any]:
    """Accuracy of an exported triage graph on held-out tickets (what a worker would serve)."""
    session = ort_session(onnx_path)
    cat_probs, urg_probs = minilm.run_text(
        session, minilm.load_tokenizer(), [t.text for t in heldout]
    )
    cat, urg = _labels(heldout)
    urg_pred = urg_probs.argmax(axis=1)
    majority = np.bincount(urg).max() / len(urg)
    return {
        "heldout_category_accuracy": round(_accuracy(cat_probs, cat), 4),
        "heldout_urgency_accuracy": round(_accuracy(urg_probs, urg), 4),
        "heldout_urgency_within_one_level": round(float((np.abs(urg_pred - urg) <= 1).mean()), 4),
        "heldout_urgency_majority_baseline": round(float(majority), 4),
        "heldout_category_recall": _recall(cat_probs, cat, tickets.CATEGORIES),
        "heldout_urgency_recall": _recall(urg_probs, urg, tickets.URGENCIES),
        "heldout_size": len(heldout),
    }


def build(
    models_dir: Path, encoder: minilm.MeanPoolEncoder, embed_onnx: Path, progress: Progress
) -> Manifest:
    """Generate data, embed it with ``embed_onnx``, fit the heads, export and publish."""
    seed_all(SEED)
    train = tickets.generate(TRAIN_SIZE, seed=tickets.TRAIN_SEED, split="train")
    tokenizer = minilm.load_tokenizer()
    progress(f"{NAME}:{VERSION} embedding {len(train)} synthetic training tickets")
    (x,) = minilm.run_text(ort_session(embed_onnx), tokenizer, [t.text for t in train])
    cat, urg = _labels(train)
    category_head = train_head(x, cat, len(tickets.CATEGORIES), SEED)
    urgency_head = train_head(x, urg, len(tickets.URGENCIES), SEED + 1)
    with torch.no_grad():
        features = torch.from_numpy(x)
        train_cat = _accuracy(category_head(features).numpy(), cat)
        train_urg = _accuracy(urgency_head(features).numpy(), urg)

    folder = prepare_dir(models_dir, NAME, VERSION)
    tokenizer.save(str(folder / "tokenizer.json"))
    onnx_path = folder / "model.onnx"
    model = TriageModel(encoder, category_head, urgency_head).eval()
    seconds = minilm.export_text_model(model, onnx_path, OUTPUTS)
    progress(f"{NAME}:{VERSION} exported in {seconds:.1f}s, scoring the held-out tickets")

    probe = list(minilm.PROBE_SENTENCES)
    ids, mask = minilm.tokenize(tokenizer, probe)
    onnx_out = ort_session(onnx_path).run(None, {"input_ids": ids, "attention_mask": mask})
    with torch.no_grad():
        torch_out = model(torch.from_numpy(ids), torch.from_numpy(mask))
    max_diff = max(
        float(np.abs(o - t.numpy()).max()) for o, t in zip(onnx_out, torch_out, strict=True)
    )
    heldout = tickets.heldout_tickets()
    metrics = {
        **heldout_metrics(onnx_path, heldout),
        "train_size": len(train),
        "train_category_accuracy": round(train_cat, 4),
        "train_urgency_accuracy": round(train_urg, 4),
        "onnx_vs_torch_max_abs_diff": max_diff,
    }
    scores = {"type": "object", "additionalProperties": {"type": "number"}}
    manifest = Manifest(
        name=NAME,
        version=VERSION,
        kind="text-classification",
        sha256=file_sha256(onnx_path),
        input_schema=minilm.TEXT_INPUT_SCHEMA,
        output_schema={
            "type": "object",
            "properties": {
                "category": {"type": "string", "enum": list(tickets.CATEGORIES)},
                "category_scores": scores,
                "urgency": {"type": "string", "enum": list(tickets.URGENCIES)},
                "urgency_scores": scores,
            },
            "required": ["category", "category_scores", "urgency", "urgency_scores"],
        },
        batching=minilm.TEXT_BATCHING,
        preprocessing=dict(minilm.TEXT_PREPROCESSING),
        labels={
            "category_probs": list(tickets.CATEGORIES),
            "urgency_probs": list(tickets.URGENCIES),
        },
        metrics=metrics,
        provenance={
            "base_model": f"{minilm.NAME}:{minilm.VERSION}",
            "base_weights": minilm.DIST,
            "heads": "two linear softmax-regression heads on the frozen, L2-normalised embedding",
            "training_data": (
                f"{len(train)} synthetic tickets from app/modelbuild/tickets.py "
                f"(seed {tickets.TRAIN_SEED}, training phrase pools)"
            ),
            "heldout_data": "app/data/tickets_heldout.jsonl (held-out phrase pools, own seed)",
            "heldout_sha256": file_sha256(tickets.HELDOUT_PATH),
            "training": {
                "optimizer": "AdamW",
                "lr": LR,
                "weight_decay": WEIGHT_DECAY,
                "epochs": EPOCHS,
                "batch_size": BATCH,
                "label_smoothing": LABEL_SMOOTHING,
                "seed": SEED,
            },
            "export_seconds": round(seconds, 2),
            **toolchain(),
        },
        created_at=now_iso(),
    )
    write_manifest(folder, manifest)
    return manifest
