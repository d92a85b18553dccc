"""How many tokens a text is for a text model: what ``usage`` reports.

Counted in the API, with the model's own tokenizer file and the truncation its worker applies
(``app.runtime.adapters.TextAdapter``), so the count is the number of tokens the model ran on,
``[CLS]`` and ``[SEP]`` included. Counting here rather than in the worker keeps the stored
output of every prediction as it is (``{"embedding": [...]}``) and needs no change to the
workers; it costs the API one more tokenisation per text (about 0.1 ms for a support ticket of
160 characters on the benchmark machine, measured by ``bench/openai_compat.py``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence

from tokenizers import Tokenizer

from app.registry import ModelEntry

# as in app.runtime.adapters: rayon's idle threads would spin on the API's cores
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class TokenCounter:
    """One tokenizer per model version, loaded on first use; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tokenizers: dict[tuple[str, str], Tokenizer] = {}

    def _tokenizer(self, entry: ModelEntry) -> Tokenizer:
        key = (entry.manifest.name, entry.manifest.version)
        with self._lock:
            tok = self._tokenizers.get(key)
            if tok is None:
                pre = entry.manifest.preprocessing
                tok = Tokenizer.from_file(str(entry.asset(pre.get("tokenizer", "tokenizer.json"))))
                tok.no_padding()
                tok.enable_truncation(max_length=int(pre.get("max_length", 256)))
                self._tokenizers[key] = tok
        return tok

    def count(self, entry: ModelEntry, texts: Sequence[str]) -> list[int]:
        """The token count of each of ``texts`` for ``entry`` (a text model)."""
        if not texts:
            return []
        tok = self._tokenizer(entry)
        # the fast variant skips the offsets nobody reads here (same ids, ~15 % less time)
        encode = getattr(tok, "encode_batch_fast", tok.encode_batch)
        return [len(e.ids) for e in encode(list(texts))]
