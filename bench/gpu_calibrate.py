"""``python -m bench.gpu_calibrate``: measure t(b) = t0 + k*b of all-MiniLM-L6-v2 on a GPU.

For ``accel-sim`` (``bench/accel_sim.py``), whose default t0 and k come from published figures:
this measures them on the GPU at hand instead, to pass as ``--sim-t0-ms``/``--sim-k-ms``. It needs
torch with CUDA and transformers (both on the device machines this project is lent at times),
not ONNX Runtime's CUDA build (too large a wheel to carry there) nor the model's weights: a
``BertModel`` of all-MiniLM-L6-v2's shape (6 layers, hidden 384, 12 heads, FFN 1536, vocab
30522) with random weights does the same arithmetic, and the time of a forward pass does not
depend on the values of the weights. Each batch size is timed with CUDA events after a warm-up,
at a padded length typical of the benchmark's corpus (``--seq``), in fp32 and fp16; the line
fitted by least squares gives t0 (per batch) and k (per item). Prints and writes JSON.

    python -m bench.gpu_calibrate --out bench/results/gpu-calibration.json
    python -m bench.gpu_calibrate --device cpu --batches 1,2,4 --iters 3   # a dry run
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

MINILM_SHAPE: dict[str, Any] = {
    "hidden_size": 384,
    "num_hidden_layers": 6,
    "num_attention_heads": 12,
    "intermediate_size": 1536,
    "vocab_size": 30522,
    "max_position_embeddings": 512,
}


def fit(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least-squares (t0, k) of t = t0 + k*b over ``(b, t)`` points."""
    n = len(points)
    mb = sum(b for b, _ in points) / n
    mt = sum(t for _, t in points) / n
    sbb = sum((b - mb) ** 2 for b, _ in points)
    k = sum((b - mb) * (t - mt) for b, t in points) / sbb if sbb else 0.0
    return mt - k * mb, k


def measure(device: str, dtype: str, batches: list[int], seq: int, iters: int) -> dict[str, Any]:
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    model: Any = BertModel(BertConfig(**MINILM_SHAPE))
    model = model.eval().to(device)
    if dtype == "fp16":
        model = model.half()
    ms: dict[int, float] = {}
    with torch.inference_mode():
        for b in batches:
            ids = torch.randint(1000, 30000, (b, seq), device=device)
            mask = torch.ones_like(ids)
            for _ in range(3):  # warm-up: kernels chosen, memory allocated
                model(input_ids=ids, attention_mask=mask)
            times = []
            for _ in range(iters):
                if device.startswith("cuda"):
                    start, end = (
                        torch.cuda.Event(enable_timing=True),
                        torch.cuda.Event(enable_timing=True),
                    )
                    start.record()
                    model(input_ids=ids, attention_mask=mask)
                    end.record()
                    torch.cuda.synchronize()
                    times.append(start.elapsed_time(end))
                else:
                    t = time.perf_counter()
                    model(input_ids=ids, attention_mask=mask)
                    times.append((time.perf_counter() - t) * 1000)
            ms[b] = statistics.median(times)
    t0, k = fit(list(ms.items()))
    return {
        "dtype": dtype,
        "ms_by_batch": {str(b): round(v, 4) for b, v in ms.items()},
        "t0_ms": round(t0, 4),
        "k_ms": round(k, 5),
        "items_per_s_at_32": round(32 / ((t0 + 32 * k) / 1000), 1),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_calibrate", description=__doc__)
    p.add_argument("--device", default="cuda")
    p.add_argument("--batches", default="1,2,4,8,16,32,64,128")
    p.add_argument("--seq", type=int, default=64, help="padded tokens per text")
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--dtypes", default="fp32,fp16")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    batches = [int(b) for b in args.batches.split(",")]
    report = {
        "what": "t(b) of a BertModel of all-MiniLM-L6-v2's shape (random weights), forward only",
        "device": args.device,
        "gpu": gpu,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "seq": args.seq,
        "runs": [
            measure(args.device, d, batches, args.seq, args.iters) for d in args.dtypes.split(",")
        ],
    }
    text = json.dumps(report, indent=2)
    print(text, flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
