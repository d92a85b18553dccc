"""Per-kind adapters: turn stored inputs into tensors and tensors into outputs.

``prepare`` runs once per message (tokenisation batched over the message's inputs), ``run``
once per model batch (pad to the batch's longest input, one ``session.run``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from app.registry import ModelEntry

# tokenizers parallelises encode_batch on a rayon pool whose idle threads spin: in a worker that
# tokenises one small message after another, that spinning takes the cores ONNX Runtime needs.
# Messages are small and many run at once, so one thread each is the better deal.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
from app.runtime import simulated
from app.runtime.session import build_session


class Adapter(Protocol):
    """What the executor needs from a model."""

    entry: ModelEntry

    def prepare(self, inputs: Sequence[dict[str, Any]]) -> list[Any]: ...

    def length(self, prepared: Any) -> int: ...

    def run(self, prepared: Sequence[Any]) -> list[dict[str, Any]]: ...


class TextAdapter:
    """Text models: a ``tokenizers`` tokenizer, then BERT-style ``input_ids``/``attention_mask``."""

    def __init__(self, entry: ModelEntry, session: ort.InferenceSession) -> None:
        self.entry = entry
        self.session = session
        pre = entry.manifest.preprocessing
        self.tokenizer = Tokenizer.from_file(
            str(entry.asset(pre.get("tokenizer", "tokenizer.json")))
        )
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=int(pre.get("max_length", 256)))
        self.input_names = {i.name for i in session.get_inputs()}
        self.output_names = [o.name for o in session.get_outputs()]
        self.pad_id = int(pre.get("pad_id", 0))

    def prepare(self, inputs: Sequence[dict[str, Any]]) -> list[np.ndarray]:
        encodings = self.tokenizer.encode_batch([i["text"] for i in inputs])
        return [np.asarray(e.ids, dtype=np.int64) for e in encodings]

    def length(self, prepared: np.ndarray) -> int:
        return int(prepared.shape[0])

    def feeds(self, prepared: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        width = max(p.shape[0] for p in prepared)
        ids = np.full((len(prepared), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(prepared), width), dtype=np.int64)
        for row, p in enumerate(prepared):
            ids[row, : p.shape[0]] = p
            mask[row, : p.shape[0]] = 1
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self.input_names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        return feeds

    def run(self, prepared: Sequence[np.ndarray]) -> list[dict[str, Any]]:
        outputs = self.session.run(self.output_names, self.feeds(prepared))
        named = dict(zip(self.output_names, outputs, strict=True))
        if self.entry.manifest.kind == "text-embedding":
            # float32 rows as they are: orjson writes each as the shortest text that reads back
            # to the same float32 (~42 % fewer bytes than float64 repr of the same values), and
            # no Python float is built per dimension
            emb = np.ascontiguousarray(named["embedding"], dtype=np.float32)
            return [{"embedding": row} for row in emb]
        return _classify(named, self.entry.manifest.labels)


def _classify(named: dict[str, np.ndarray], labels: dict[str, list[str]]) -> list[dict[str, Any]]:
    """``category_probs`` → ``category`` + ``category_scores``, for every head in ``labels``."""
    heads = {name.removesuffix("_probs"): (named[name], names) for name, names in labels.items()}
    n = len(next(iter(heads.values()))[0])
    results: list[dict[str, Any]] = [{} for _ in range(n)]
    for head, (probs, names) in heads.items():
        best = probs.argmax(axis=1)
        for row in range(n):
            results[row][head] = names[int(best[row])]
            results[row][f"{head}_scores"] = {
                label: round(float(p), 6) for label, p in zip(names, probs[row], strict=True)
            }
    return results


class TabularAdapter:
    """Tabular models: a float32 ``features`` matrix in, one probability per row out."""

    def __init__(self, entry: ModelEntry, session: ort.InferenceSession) -> None:
        self.entry = entry
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.output_name = session.get_outputs()[0].name

    def prepare(self, inputs: Sequence[dict[str, Any]]) -> list[np.ndarray]:
        matrix = np.asarray([i["features"] for i in inputs], dtype=np.float32)
        return list(matrix)

    def length(self, prepared: np.ndarray) -> int:
        return 1

    def run(self, prepared: Sequence[np.ndarray]) -> list[dict[str, Any]]:
        (out,) = self.session.run([self.output_name], {self.input_name: np.stack(prepared)})
        flat = out.reshape(len(prepared), -1)[:, 0]
        return [{"probability": float(p)} for p in flat]


def load_adapter(
    entry: ModelEntry, *, intra_op_threads: int = 1, providers: list[str] | None = None
) -> Adapter:
    """Verify the model file against its sha256, build its session and adapter."""
    entry.verify()
    session = build_session(entry.onnx_path, intra_op_threads=intra_op_threads, providers=providers)
    # benchmark only (INFERQ_BENCH_SIMULATED_DEVICE): a simulated accelerator in its place
    session = simulated.wrap_if_enabled(session, entry.manifest.name)
    if entry.manifest.kind == "tabular":
        return TabularAdapter(entry, session)
    return TextAdapter(entry, session)
