"""The server side of ``python -m bench --peers``: one script per peer, each run as its own
subprocess (``python -m bench.peer_servers.<peer>_server``) by ``bench/peers.py``.

They import nothing of the benchmark's client side and only ``app.registry`` and
``app.runtime`` of inferq (for the model: the same manifest, tokenizer, ONNX Runtime session
options and padding as inferq's workers), so they run from an interpreter that has the peer's
packages, ONNX Runtime, tokenizers, numpy and pydantic and nothing else of inferq's.
"""
