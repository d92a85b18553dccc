"""The Triton peer: NVIDIA Triton Inference Server's dynamic batcher, through PyTriton.

PyTriton (``nvidia-pytriton``) ships ``tritonserver`` in its wheel and runs it as a child; the
inference callables run in this process, one thread per model instance, fed by Triton's Python
backend stubs over local sockets. Configured as its documentation shows for a batching model:
one ``@batch`` callable per instance (``infer_func=[f1, f2]``: two instances, each with its own
ONNX Runtime session of one intra-op thread), ``ModelConfig(max_batch_size=...,
batcher=DynamicBatcher(max_queue_delay_microseconds=..., preferred_batch_size=[...]))``.
Every endpoint (HTTP, gRPC, metrics) binds 127.0.0.1. Clients POST the text itself to
``/v2/models/<model>/infer`` (KServe v2 JSON, a BYTES tensor of shape [1, 1]); the callable
tokenises, runs and returns the embedding, as inferq does per request.

``python -m bench.peer_servers.triton_server --models-dir var/models --model minilm-embed
--port 8000 --grpc-port 8001 --metrics-port 8002``
"""

from __future__ import annotations

import os
import sysconfig
from typing import Any

import numpy as np

from bench.peer_servers.common import announce, load, parser, stop_event, versions


class Instance:
    """One model instance: its own adapter (ONNX Runtime session) and a ``@batch`` callable."""

    def __init__(self, adapter: Any) -> None:
        from pytriton.decorators import batch

        self.adapter = adapter
        self.tabular = adapter.entry.manifest.kind == "tabular"
        self.infer = batch(self._infer)

    def _infer(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        if self.tabular:
            rows = self.adapter.run(list(inputs["features"].astype(np.float32)))
            out = np.asarray([[r["probability"]] for r in rows], dtype=np.float32)
            result = {"probability": out}
        else:
            texts = [t.decode("utf-8") for t in inputs["text"].reshape(-1)]
            rows = self.adapter.run(self.adapter.prepare([{"text": t} for t in texts]))
            result = {"embedding": np.stack([r["embedding"] for r in rows])}
        n = len(rows)
        result["batch_size"] = np.full((n, 1), n, dtype=np.int32)
        return result


def same_libpython() -> None:
    """Have Triton's Python backend stub load this interpreter's ``libpython``: it links against
    ``libpython3.X.so.1.0`` and takes the first the loader finds, a system Python's of another
    patch level (e.g. Debian's 3.11.2 beside a pyenv 3.11.7) whose C parts do not match this
    interpreter's standard library (the stub then fails in ``multiprocessing``)."""
    libdir = sysconfig.get_config_var("LIBDIR")
    if sysconfig.get_config_var("Py_ENABLE_SHARED") and libdir:
        old = os.environ.get("LD_LIBRARY_PATH")
        os.environ["LD_LIBRARY_PATH"] = f"{libdir}:{old}" if old else libdir


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--grpc-port", type=int, required=True)
    p.add_argument("--metrics-port", type=int, required=True)
    p.add_argument(
        "--preferred-batch-sizes", default="16,32", help="comma-separated; empty for none"
    )
    args = p.parse_args()
    done = stop_event()
    same_libpython()

    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    preferred = [int(x) for x in args.preferred_batch_sizes.split(",") if x.strip()]
    config = TritonConfig(
        http_address=args.host,
        http_port=args.port,
        grpc_address=args.host,
        grpc_port=args.grpc_port,
        metrics_address=args.host,
        metrics_port=args.metrics_port,
    )
    model_config = ModelConfig(
        max_batch_size=args.max_batch_size,
        batcher=DynamicBatcher(
            max_queue_delay_microseconds=int(args.max_delay_ms * 1000),
            preferred_batch_size=preferred or None,
        ),
    )
    served = {}
    with Triton(config=config) as triton:
        for name in args.model:
            instances = [
                Instance(load(args.models_dir, name, args.intra_op_threads, args.providers))
                for _ in range(args.replicas)
            ]
            mf = instances[0].adapter.entry.manifest
            if mf.kind == "tabular":
                n = mf.n_features or 12
                inputs = [Tensor(name="features", dtype=np.float32, shape=(n,))]
                outputs = [Tensor(name="probability", dtype=np.float32, shape=(1,))]
            else:
                inputs = [Tensor(name="text", dtype=bytes, shape=(1,))]
                outputs = [Tensor(name="embedding", dtype=np.float32, shape=(-1,))]
            outputs.append(Tensor(name="batch_size", dtype=np.int32, shape=(1,)))
            triton.bind(
                model_name=name,
                infer_func=[i.infer for i in instances],
                inputs=inputs,
                outputs=outputs,
                config=model_config,
                strict=True,
            )
            served[name] = f"/v2/models/{name}/infer"
        triton.run()
        announce(
            {
                "endpoints": served,
                "settings": {
                    "max_batch_size": args.max_batch_size,
                    "max_queue_delay_microseconds": int(args.max_delay_ms * 1000),
                    "preferred_batch_size": preferred,
                    "instances": args.replicas,
                    "intra_op_threads": args.intra_op_threads,
                    "http": f"{args.host}:{args.port}",
                    "grpc": f"{args.host}:{args.grpc_port}",
                    "metrics": f"{args.host}:{args.metrics_port}",
                },
                "versions": versions("nvidia-pytriton", "tritonclient"),
            }
        )
        while not done.wait(1.0):
            if not triton.is_alive():
                raise SystemExit("tritonserver or a model instance died")


if __name__ == "__main__":
    main()
