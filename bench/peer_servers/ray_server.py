"""The Ray Serve peer: ``@serve.batch`` in a deployment of ``--replicas`` replicas.

Configured as Ray Serve's documentation shows for dynamic request batching: a deployment with
``num_replicas``, ``ray_actor_options={"num_cpus": 1}`` (one core each) and, since its default
of 5 would cap every batch at 5, ``max_ongoing_requests`` raised (here to ``--max-ongoing``, 64
by default); its ``@serve.batch(max_batch_size=..., batch_wait_timeout_s=...)`` method
tokenises, runs and returns the batch (each replica has its own ONNX Runtime session of one
intra-op thread). Requests reach it over HTTP through Serve's proxy at ``/<model>``, a JSON body
``{"text": ...}`` (or ``{"features": [...]}``) as inferq's input. Everything Ray starts binds
127.0.0.1: the node IP (``loopback_node``), Serve's proxy (``http_options.host``) and the
replicas' inter-deployment gRPC servers (``replica_grpc_on_loopback``); no dashboard.

``python -m bench.peer_servers.ray_server --models-dir var/models --model minilm-embed --port 8000``
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bench.peer_servers.common import announce, jsonable, load, parser, stop_event, versions


def loopback_node() -> None:
    """Make this single-node Ray's node IP 127.0.0.1, so that GCS, raylet, the workers and the
    agents bind it. ``ray.init(_node_ip_address="127.0.0.1")`` alone does not: Ray replaces a
    loopback address by the machine's reachable one unless clusters are off, as they are by
    default on macOS and Windows; this switch is the variable Ray reads for that
    (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER``, ``ray._private.ray_constants.ENABLE_RAY_CLUSTER``)."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def replica_grpc_on_loopback() -> None:
    """In a replica, before Serve starts its inter-deployment gRPC server: bind it to
    127.0.0.1. Serve 2.60 binds that server to ``[::]:0`` (all interfaces) with nothing to
    configure it (``ray/serve/_private/replica.py``); here only the address changes."""
    try:
        from ray.serve._private import replica
    except ImportError:
        return
    add = getattr(replica, "add_port_to_grpc_server", None)
    if add is None or getattr(add, "_bench_loopback", False):
        return

    def on_loopback(server: Any, address: str) -> Any:
        return add(server, address.replace("[::]:", "127.0.0.1:", 1))

    on_loopback._bench_loopback = True  # type: ignore[attr-defined]
    setattr(replica, "add_port_to_grpc_server", on_loopback)  # noqa: B010


def deployment(models_dir: Path, name: str, args: Any) -> Any:
    """The Serve application for one model."""
    from ray import serve
    from starlette.requests import Request

    @serve.deployment(
        name=f"peer-{name}",
        num_replicas=args.replicas,
        ray_actor_options={"num_cpus": 1},
        max_ongoing_requests=args.max_ongoing,
    )
    class Model:
        def __init__(self) -> None:
            replica_grpc_on_loopback()
            self.adapter = load(models_dir, name, args.intra_op_threads, args.providers)

        @serve.batch(
            max_batch_size=args.max_batch_size, batch_wait_timeout_s=args.max_delay_ms / 1000
        )
        async def run(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
            rows = self.adapter.run(self.adapter.prepare(items))
            return [{**jsonable(r), "batch_size": len(items)} for r in rows]

        async def __call__(self, request: Request) -> dict[str, Any]:
            out: dict[str, Any] = await self.run(await request.json())
            return out

    return Model.bind()  # type: ignore[attr-defined]


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--max-ongoing", type=int, default=64, help="max_ongoing_requests per replica")
    args = p.parse_args()
    done = stop_event()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    loopback_node()

    import ray
    from ray import serve

    ray.init(
        num_cpus=args.replicas,
        include_dashboard=False,
        _node_ip_address=args.host,
        log_to_driver=False,
    )
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
        served = {}
        for name in args.model:
            serve.run(deployment(args.models_dir, name, args), name=name, route_prefix=f"/{name}")
            served[name] = f"/{name}"
        announce(
            {
                "endpoints": served,
                "settings": {
                    "num_replicas": args.replicas,
                    "ray_actor_options": {"num_cpus": 1},
                    "ray_init_num_cpus": args.replicas,
                    "max_ongoing_requests": args.max_ongoing,
                    "max_batch_size": args.max_batch_size,
                    "batch_wait_timeout_s": args.max_delay_ms / 1000,
                    "intra_op_threads": args.intra_op_threads,
                    "http": f"{args.host}:{args.port}",
                    "dashboard": False,
                },
                "versions": versions("ray", "starlette", "uvicorn"),
            }
        )
        while not done.wait(1.0):
            pass
    finally:
        serve.shutdown()  # type: ignore[no-untyped-call]
        ray.shutdown()


if __name__ == "__main__":
    main()
