"""``python -m bench.openai_compat``: ``POST /v1/embeddings`` against ``POST /v1/predictions``
with ``Prefer: wait``, single texts, side by side on one stack.

The same concurrent clients drive each endpoint in turn (``--rounds`` rounds of ``--seconds``
each, after a short warm-up of each), so both see the same stack, the same machine load and
the same texts (minilm-embed, the benchmark corpus). Embeddings are asked as floats (as inferq's
own output) and as base64 (what the ``openai`` SDK asks for by default). Also measured: what
counting a text's tokens costs the API (``usage``), in-process.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from pathlib import Path
from typing import Any

from bench.corpus import ticket_sample
from bench.http import MiniClient
from bench.stack import DEFAULT_BROKER, Stack, StackConfig, fresh_database, migrate

MODEL = "minilm-embed"
BENCH_DB = "postgresql://postgres@127.0.0.1:5432/inferq_bench_openai"


def variants() -> dict[str, tuple[str, Any, dict[str, str]]]:
    """name -> (path, body maker, headers)."""
    return {
        "predictions (Prefer: wait)": (
            "/v1/predictions",
            lambda t: {"model": MODEL, "input": {"text": t}},
            {"Prefer": "wait=30"},
        ),
        "embeddings (float)": (
            "/v1/embeddings",
            lambda t: {"model": MODEL, "input": t, "encoding_format": "float"},
            {},
        ),
        "embeddings (base64)": (
            "/v1/embeddings",
            lambda t: {"model": MODEL, "input": t, "encoding_format": "base64"},
            {},
        ),
    }


async def drive(
    base_url: str,
    path: str,
    body: Any,
    headers: dict[str, str],
    texts: list[str],
    clients: int,
    seconds: float,
) -> dict[str, float]:
    """``clients`` loops sending one text each until ``seconds`` have passed."""
    http = MiniClient(base_url)
    latencies: list[float] = []
    errors = 0
    end = time.monotonic() + seconds
    n = len(texts)

    async def one(k: int) -> None:
        nonlocal errors
        i = k
        while time.monotonic() < end:
            start = time.monotonic()
            status, _ = await http.request("POST", path, body(texts[i % n]), headers)
            if status == 200:
                latencies.append(time.monotonic() - start)
            else:
                errors += 1
            i += clients

    began = time.monotonic()
    await asyncio.gather(*(one(k) for k in range(clients)))
    took = time.monotonic() - began
    await http.aclose()
    latencies.sort()
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    return {
        "rps": len(latencies) / took,
        "p50_ms": 1000 * q[49],
        "p95_ms": 1000 * q[94],
        "errors": errors,
    }


def tokenize_cost(models_dir: Path, texts: list[str]) -> float:
    """Microseconds the API spends counting one text's tokens (``usage``)."""
    from app.openai_compat.tokens import TokenCounter
    from app.registry import Registry

    entry = Registry(models_dir).get(MODEL)
    counter = TokenCounter()
    counter.count(entry, texts[:1])
    start = time.perf_counter()
    for t in texts:
        counter.count(entry, [t])
    return 1e6 * (time.perf_counter() - start) / len(texts)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.openai_compat", description=__doc__)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--database-url", default=BENCH_DB, help="dropped and made afresh")
    p.add_argument("--broker-url", default=os.environ.get("INFERQ_BROKER_URL", DEFAULT_BROKER))
    default_models = Path(os.environ.get("INFERQ_MODELS_DIR", "var/models"))
    if not default_models.is_dir():
        default_models = Path("var/test-models")
    p.add_argument("--models-dir", type=Path, default=default_models)
    args = p.parse_args(argv)

    texts = ticket_sample(2000, salt=14)
    print(f"token counting in the API: {tokenize_cost(args.models_dir, texts):.1f} µs per text")
    fresh_database(args.database_url)
    migrate(args.database_url)
    cfg = StackConfig(
        database_url=args.database_url,
        broker_url=args.broker_url,
        models_dir=args.models_dir,
        models=[MODEL],
        workers=args.workers,
        beat=False,
    )
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in variants()}
    with Stack(cfg) as stack:
        print(f"stack up: API + {args.workers} worker(s); {args.clients} clients")
        for path, body, headers in variants().values():
            asyncio.run(
                drive(stack.base_url, path, body, headers, texts, args.clients, args.warmup)
            )
        for r in range(args.rounds):
            for name, (path, body, headers) in variants().items():
                got = asyncio.run(
                    drive(stack.base_url, path, body, headers, texts, args.clients, args.seconds)
                )
                runs[name].append(got)
                print(
                    f"round {r + 1} {name:<28} {got['rps']:7.1f} req/s  p50 {got['p50_ms']:6.1f} ms"
                    f"  p95 {got['p95_ms']:6.1f} ms  errors {got['errors']:.0f}"
                )
    print("\nmedian of the rounds:")
    print("| endpoint | req/s | p50 ms | p95 ms |\n| --- | --- | --- | --- |")
    for name, rs in runs.items():
        med = {k: statistics.median(x[k] for x in rs) for k in ("rps", "p50_ms", "p95_ms")}
        print(f"| {name} | {med['rps']:.1f} | {med['p50_ms']:.1f} | {med['p95_ms']:.1f} |")


if __name__ == "__main__":
    main()
