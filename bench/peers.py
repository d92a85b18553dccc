"""``python -m bench --peers``: inferq beside the systems a user would pick instead of it.

Each peer serves the same ONNX file with the same ONNX Runtime settings as inferq's workers
(``--workers`` replicas of ``--intra-op-threads`` threads each, inferq's own adapter for
tokenising, padding and the session, see ``bench/peer_servers/common.py``), with the batching
budget of the model's manifest (``max_batch_size``, ``max_delay_ms``), configured as its own
documentation shows; it is driven by the very clients of inferq's ``online`` (K closed-loop
clients, one input per request) and ``online-light`` (Poisson arrivals at ~10 % of *that
peer's* ``online`` capacity) from ``bench/scenarios.py``, only the request differing:

- ``triton``: NVIDIA Triton's dynamic batcher through PyTriton (``nvidia-pytriton``, which
  bundles ``tritonserver``), KServe v2 JSON over HTTP, the text as a BYTES tensor.
- ``ray``: Ray Serve, ``@serve.batch`` in a deployment of N replicas of one CPU each, HTTP
  through Serve's proxy.

Each (peer, model) runs as its own subprocess (``python -m bench.peer_servers.<peer>_server``),
alone on the machine (inferq's stack is down by then), everything on 127.0.0.1; it is stopped by
its PID at the end, then whatever it started and left behind, by the PIDs seen while it ran.

A peer runs from its own virtual environment, ``var/peers-venv/<peer>`` (``python -m
bench.peers install <peer>``), else from the interpreter running the bench: Ray Serve installs
beside inferq's packages (``pip install -e '.[peers]'`` adds ~35 packages and moves none), PyTriton
cannot (it pins ``numpy<2`` where inferq runs numpy 2, and its ``tritonclient`` ``protobuf<7``,
a downgrade of inferq's), so it gets a venv of its own with the same onnxruntime and tokenizers
versions. A peer that cannot be found is recorded as skipped, with how to install it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson

from bench import scenarios
from bench.corpus import inputs_for
from bench.http import JsonClient
from bench.peer_servers.common import READY, SUPPORTED_KINDS
from bench.phases import metered, say, settle, sizes_for
from bench.procstat import children
from bench.scenarios import BenchError, Request, Sample
from bench.stack import ROOT, Proc, StackConfig, child_env, free_port

VENVS = ROOT / "var" / "peers-venv"
PAIRED = ("onnxruntime", "tokenizers")
"""Installed in a peer's venv at the versions the bench runs with: the same ONNX Runtime build."""

Parse = Callable[[Any], tuple[list[float], int | None]]
"""A peer's answer -> (the model's output values, the batch size it ran in, if it says)."""


@dataclass(frozen=True)
class PeerSpec:
    name: str
    title: str
    module: str
    """The server script, run as ``python -m <module>``."""
    imports: tuple[str, ...]
    """What its interpreter must import (besides ONNX Runtime, tokenizers and pydantic)."""
    requirements: tuple[str, ...]
    """What ``python -m bench.peers install`` puts in its venv (besides ``PAIRED``)."""
    extra: str | None = None
    """The pyproject extra that installs it beside inferq, where it can be."""

    @property
    def venv(self) -> Path:
        return VENVS / self.name

    @property
    def install_hint(self) -> str:
        venv = self.venv.relative_to(ROOT) if self.venv.is_relative_to(ROOT) else self.venv
        own = (
            f"`.venv/bin/python -m bench.peers install {self.name}` (a venv at {venv} with "
            f"{', '.join(self.requirements)})"
        )
        if self.extra:
            return f"`.venv/bin/pip install -e '.[{self.extra}]'` (beside inferq), or {own}"
        return f"{own}; it cannot share inferq's environment"


PEERS = {
    "triton": PeerSpec(
        "triton",
        "NVIDIA Triton dynamic batcher (PyTriton)",
        "bench.peer_servers.triton_server",
        ("pytriton.triton",),
        ("nvidia-pytriton==0.7.0", "numpy<2", "pydantic>=2.7"),
    ),
    "ray": PeerSpec(
        "ray",
        "Ray Serve (@serve.batch)",
        "bench.peer_servers.ray_server",
        ("ray.serve",),
        ("ray[serve]>=2.40", "pydantic>=2.7"),
        extra="peers",
    ),
}


@dataclass(frozen=True)
class PeerSettings:
    """What every peer is given: the model manifest's batching budget and inferq's threads."""

    max_batch_size: int
    max_delay_ms: float
    replicas: int
    intra_op_threads: int
    max_ongoing_requests: int
    """Ray Serve's per replica (its default, 5, would cap every batch at 5)."""
    preferred_batch_sizes: tuple[int, ...]
    """Triton's ``preferred_batch_size``: half the largest and the largest."""
    providers: tuple[str, ...] = ()

    @classmethod
    def for_model(cls, m: dict[str, Any], cfg: StackConfig, clients: int) -> PeerSettings:
        b = m.get("batching") or {}
        size = int(b.get("max_batch_size", 32))
        return cls(
            max_batch_size=size,
            max_delay_ms=float(b.get("max_delay_ms", 5.0)),
            replicas=cfg.workers,
            intra_op_threads=cfg.intra_op_threads,
            max_ongoing_requests=max(2 * size, clients),
            preferred_batch_sizes=tuple(sorted({max(1, size // 2), size})),
            providers=tuple(cfg.providers),
        )


# -- finding a peer's interpreter ------------------------------------------------------------


def _import_check(spec: PeerSpec) -> str:
    mods = [*spec.imports, "onnxruntime", "tokenizers", "app.runtime.adapters"]
    return "; ".join(f"import {m}" for m in mods)


def find_python(spec: PeerSpec, candidates: Sequence[Path] | None = None) -> tuple[str | None, str]:
    """(an interpreter that imports the peer's packages and inferq's adapter, "") or (None, why):
    the peer's own venv first, then the one running the bench."""
    tried = []
    for py in (
        candidates
        if candidates is not None
        else [spec.venv / "bin" / "python", Path(sys.executable)]
    ):
        if not py.exists():
            tried.append(f"{py}: absent")
            continue
        try:
            r = subprocess.run(
                [str(py), "-c", _import_check(spec)],
                cwd=ROOT,
                env=_server_env(),
                capture_output=True,
                text=True,
                timeout=180,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            tried.append(f"{py}: {exc}")
            continue
        if r.returncode == 0:
            return str(py), ""
        last = (r.stderr.strip().splitlines() or [f"exit status {r.returncode}"])[-1]
        tried.append(f"{py}: {last}")
    why = f"{spec.title} is not installed ({'; '.join(tried)}); install it with {spec.install_hint}"
    return None, why


def _server_env() -> dict[str, str]:
    env = child_env()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    env["TOKENIZERS_PARALLELISM"] = "false"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return env


# -- what a request to each peer looks like --------------------------------------------------


def triton_body(item: dict[str, Any]) -> dict[str, Any]:
    """One input as a KServe v2 JSON request: the text itself (BYTES), or the features."""
    if "text" in item:
        tensor = {"name": "text", "shape": [1, 1], "datatype": "BYTES", "data": [item["text"]]}
    else:
        f = item["features"]
        tensor = {"name": "features", "shape": [1, len(f)], "datatype": "FP32", "data": f}
    return {"inputs": [tensor]}


def triton_parse(doc: Any) -> tuple[list[float], int | None]:
    outs = {o["name"]: o for o in doc["outputs"]}
    values = outs["embedding" if "embedding" in outs else "probability"]["data"]
    size = outs.get("batch_size", {}).get("data")
    return list(values), int(size[0]) if size else None


def ray_body(item: dict[str, Any]) -> dict[str, Any]:
    return item


def ray_parse(doc: Any) -> tuple[list[float], int | None]:
    values = doc["embedding"] if "embedding" in doc else [doc["probability"]]
    size = doc.get("batch_size")
    return list(values), int(size) if size is not None else None


WIRE: dict[str, tuple[Callable[[dict[str, Any]], Any], Parse]] = {
    "triton": (triton_body, triton_parse),
    "ray": (ray_body, ray_parse),
}


def peer_request(peer: str, path: str) -> Request:
    """What ``scenarios.online``/``online_light`` send to ``peer``: one POST per input."""
    body, parse = WIRE[peer]

    async def request(client: JsonClient, item: dict[str, Any]) -> Sample:
        t0 = time.perf_counter()
        status, doc = await client.request("POST", path, body(item))
        done = time.perf_counter()
        if status != 200:
            raise BenchError(f"POST {path} answered {status}: {str(doc)[:300]}")
        return Sample(t0, done, "succeeded", parse(doc)[1])

    return request


# -- the processes ---------------------------------------------------------------------------


def server_argv(
    spec: PeerSpec, python: str, models_dir: Path, model: str, port: int, s: PeerSettings
) -> list[str]:
    argv = [
        python,
        "-m",
        spec.module,
        "--models-dir",
        str(models_dir),
        "--model",
        model,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--replicas",
        str(s.replicas),
        "--intra-op-threads",
        str(s.intra_op_threads),
        "--max-batch-size",
        str(s.max_batch_size),
        "--max-delay-ms",
        str(s.max_delay_ms),
        "--providers",
        ",".join(s.providers),
    ]
    if spec.name == "triton":
        argv += [
            "--grpc-port",
            str(free_port()),
            "--metrics-port",
            str(free_port()),
            "--preferred-batch-sizes",
            ",".join(map(str, s.preferred_batch_sizes)),
        ]
    elif spec.name == "ray":
        argv += ["--max-ongoing", str(s.max_ongoing_requests)]
    return argv


def _start_time(pid: int) -> str | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2 :].split()[19]


def tree(pid: int) -> dict[int, str]:
    """``pid`` and its live descendants, each with its start time (so a reused PID is told
    apart from the process that had it)."""
    out = {}
    for p in [pid, *children(pid)]:
        start = _start_time(p)
        if start is not None:
            out[p] = start
    return out


def reap(known: dict[int, str], grace: float = 10.0) -> list[int]:
    """SIGKILL what is left of ``known`` (PIDs this bench's peer started) after ``grace``
    seconds; only processes whose start time still matches. Returns the PIDs killed."""
    end = time.monotonic() + grace
    left = [p for p, t in known.items() if _start_time(p) == t]
    while left and time.monotonic() < end:
        time.sleep(0.2)
        left = [p for p in left if _start_time(p) == known[p]]
    for p in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)
    return left


def _addr(hexaddr: str) -> str:
    host, port = hexaddr.split(":")
    raw = bytes.fromhex(host)
    if len(raw) == 4:
        ip = socket.inet_ntop(socket.AF_INET, raw[::-1])
    else:
        ip = socket.inet_ntop(
            socket.AF_INET6, b"".join(raw[i : i + 4][::-1] for i in (0, 4, 8, 12))
        )
    return f"{ip}:{int(port, 16)}"


def listening(pids: Sequence[int]) -> list[str]:
    """The TCP addresses ``pids`` listen on (from ``/proc``)."""
    inodes = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[3] == "0A" and f[9] in inodes:  # LISTEN
                found.add(_addr(f[1]))
    return sorted(found)


def is_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0].removeprefix("::ffff:")  # IPv4-mapped (gRPC's)
    return host.startswith("127.") or host == "::1"


# -- the run ---------------------------------------------------------------------------------


def _expected(cfg: StackConfig, name: str, item: dict[str, Any]) -> list[float]:
    """What inferq's adapter answers for ``item``, in this process: the probe's reference."""
    from app.registry import Registry
    from app.runtime.adapters import load_adapter

    adapter = load_adapter(
        Registry(cfg.models_dir).get(name),
        intra_op_threads=cfg.intra_op_threads,
        providers=list(cfg.providers) or None,
    )
    row = adapter.run(adapter.prepare([item]))[0]
    if "embedding" in row:
        return [float(x) for x in row["embedding"]]
    return [float(row["probability"])]


def probe(
    peer: str, base_url: str, path: str, item: dict[str, Any], expected: list[float]
) -> dict[str, Any]:
    """One request, its answer against inferq's adapter's (the same model, the same work)."""
    import httpx

    body, parse = WIRE[peer]
    r = httpx.post(
        base_url + path,
        content=orjson.dumps(body(item)),
        headers={"content-type": "application/json"},
        timeout=60,
    )
    if r.status_code != 200:
        raise BenchError(f"probe: POST {path} answered {r.status_code}: {r.text[:300]}")
    values, _ = parse(r.json())
    if len(values) != len(expected):
        raise BenchError(f"probe: {len(values)} values, inferq's adapter gives {len(expected)}")
    diff = max(abs(a - b) for a, b in zip(values, expected, strict=True))
    return {"values": len(values), "max_abs_diff_vs_inferq": float(f"{diff:.3g}")}


def _server_version(peer: str, base_url: str) -> str | None:
    """Triton says its version at ``GET /v2`` (KServe v2 server metadata)."""
    if peer != "triton":
        return None
    import httpx

    try:
        return str(httpx.get(base_url + "/v2", timeout=10).json().get("version"))
    except (httpx.HTTPError, ValueError):
        return None


def single_item_ms(
    cfg: StackConfig, args: argparse.Namespace, name: str, m: dict[str, Any]
) -> float:
    """The model's single-item time (raw, 1 process, batch 1), measured here if no phase did."""
    if m.get("single_item_ms"):
        return float(m["single_item_ms"])
    from bench import raw

    sz = sizes_for(m["kind"], args.quick, args.scale)
    spec = raw.RawSpec(
        cfg.models_dir,
        name,
        sz.raw_items,
        cfg.intra_op_threads,
        tuple(cfg.providers),
        sz.raw_min_seconds,
    )
    one = raw.run_raw(spec, procs=1, batch_sizes=[1])
    m["single_item_ms"] = round(1000.0 / one.items_per_s[1], 4)
    return float(m["single_item_ms"])


def _drive(
    peer: str,
    base_url: str,
    path: str,
    cfg: StackConfig,
    args: argparse.Namespace,
    name: str,
    m: dict[str, Any],
    rec: dict[str, Any],
    groups: dict[str, Callable[[], list[int]]],
) -> None:
    """``online`` then ``online-light`` against one started peer, into ``rec``."""
    chosen = set(args.scenarios.split(",")) & {"online", "online-light"} or {
        "online",
        "online-light",
    }
    sz = sizes_for(m["kind"], args.quick, args.scale)
    request = peer_request(peer, path)
    if "online" in chosen:
        items = inputs_for(m["kind"], sz.online, n_features=m["n_features"], salt=2)
        rec.setdefault("settle", {})["online"] = settle(cfg.database_url)
        say(f"  {peer} online {name}: {len(items)} items, {args.clients} clients …")
        with metered(rec, "online", len(items), groups):
            o = rec["online"] = scenarios.online(
                base_url,
                name,
                items,
                clients=args.clients,
                warmup=2 * args.clients,
                http=args.http_client,
                request=request,
            )
        o.pop("breakdown_p50_ms", None)  # inferq's stored timestamps: a peer has none
        say(
            f"    {peer} online {name}: {o['items_per_s']:,.0f}/s, p50 {o['p50_ms']} ms, "
            f"p99 {o['p99_ms']} ms, mean batch {o['mean_batch']}"
        )
    if "online-light" in chosen:
        capacity = (rec.get("online") or m.get("online") or {}).get("items_per_s", 50.0)
        rate = args.light_rate or 0.1 * capacity
        n = max(30, int(rate * sz.light_seconds))
        items = inputs_for(m["kind"], n, n_features=m["n_features"], salt=3)
        single = single_item_ms(cfg, args, name, m)
        rec.setdefault("settle", {})["online-light"] = settle(cfg.database_url)
        say(f"  {peer} online-light {name}: {n} items at {rate:.1f}/s (Poisson) …")
        with metered(rec, "online-light", n, groups):
            lt = rec["online_light"] = scenarios.online_light(
                base_url,
                name,
                items,
                rate=rate,
                single_item_ms=single,
                http=args.http_client,
                request=request,
            )
        lt.pop("breakdown_p50_ms", None)
        say(
            f"    {peer} online-light {name}: p50 {lt['p50_ms']} ms, p99 {lt['p99_ms']} ms "
            f"(added {lt['added_p50_ms']} / {lt['added_p99_ms']} ms)"
        )


def run_peer(
    spec: PeerSpec,
    python: str,
    cfg: StackConfig,
    args: argparse.Namespace,
    name: str,
    m: dict[str, Any],
) -> dict[str, Any]:
    """Start ``spec`` serving ``name``, probe it, drive it, stop it; its record."""
    settings = PeerSettings.for_model(m, cfg, args.clients)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    rec: dict[str, Any] = {"title": spec.title, "python": python, "settings": asdict(settings)}
    log = cfg.log_dir / f"peer-{spec.name}-{name}.log"
    argv = server_argv(spec, python, cfg.models_dir, name, port, settings)
    rec["command"] = " ".join(argv[1:])
    say(f"peer {spec.name} {name}: starting {spec.title} ({python}); log {log} …")
    t0 = time.monotonic()
    log.unlink(missing_ok=True)  # its ready line is looked for in it
    proc = Proc(argv, _server_env(), log, f"peer-{spec.name}")
    seen: dict[int, str] = {}
    try:
        proc.wait_for_log(READY, timeout=300)
        seen.update(tree(proc.pid))
        rec["startup_s"] = round(time.monotonic() - t0, 1)
        line = next(x for x in proc.output().splitlines() if x.startswith(READY))
        info = orjson.loads(line[len(READY) :])
        rec["server"] = info
        path = info["endpoints"][name]
        rec["endpoint"] = f"POST {base_url}{path}"
        rec["server_version"] = _server_version(spec.name, base_url)
        item = inputs_for(m["kind"], 1, n_features=m["n_features"], salt=9)[0]
        rec["probe"] = probe(spec.name, base_url, path, item, _expected(cfg, name, item))
        time.sleep(1.0)  # let the replicas settle their sockets before looking
        seen.update(tree(proc.pid))
        rec["listening"] = listening(list(seen))
        rec["not_loopback"] = [a for a in rec["listening"] if not is_loopback(a)]
        if rec["not_loopback"]:
            say(f"  WARNING: {spec.name} listens beyond loopback: {rec['not_loopback']}")
        groups = {
            "peer": lambda: [proc.pid, *children(proc.pid)],
            "client": lambda: [os.getpid()],
        }
        _drive(spec.name, base_url, path, cfg, args, name, m, rec, groups)
        rec["inferq_over_peer"] = comparison(m, rec)
        seen.update(tree(proc.pid))
    finally:
        seen.update(tree(proc.pid))
        proc.stop(timeout=60)
        killed = reap({p: t for p, t in seen.items() if p != proc.pid})
        if killed:
            rec["killed_leftovers"] = killed
    return rec


@contextlib.contextmanager
def _sigterm_exits() -> Iterator[None]:
    """SIGTERM to the bench raises ``SystemExit`` (so ``run_peer`` stops its peer) meanwhile."""

    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def phase_peers(cfg: StackConfig, args: argparse.Namespace, res: dict[str, Any]) -> None:
    """Every peer in ``args.peers`` on every model of ``res``, one at a time, into
    ``res[model]["peers"][peer]``; a peer that is missing, or fails, is recorded as skipped."""
    with _sigterm_exits():
        _phase_peers(cfg, args, res)


def _phase_peers(cfg: StackConfig, args: argparse.Namespace, res: dict[str, Any]) -> None:
    for peer in args.peers:
        spec = PEERS[peer]
        python, why = find_python(spec)
        if python is None:
            say(f"peer {peer}: skipped: {why}")
        for name, m in res.items():
            out = m.setdefault("peers", {})
            if python is None:
                out[peer] = {"title": spec.title, "skipped": why}
                continue
            if m.get("kind") not in SUPPORTED_KINDS:
                out[peer] = {"title": spec.title, "skipped": f"kind {m.get('kind')} not served"}
                continue
            try:
                out[peer] = run_peer(spec, python, cfg, args, name, m)
            except (BenchError, RuntimeError, TimeoutError, OSError, KeyError, ValueError) as exc:
                tail = Path(cfg.log_dir / f"peer-{peer}-{name}.log")
                say(f"peer {peer} {name}: failed: {type(exc).__name__}: {str(exc)[:2000]}")
                out[peer] = {
                    "title": spec.title,
                    "skipped": f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}",
                    "log": str(tail),
                }


def parse_names(value: str | None) -> list[str]:
    """``--peers`` (all), ``--peers triton,ray``: the names, in order; ValueError if unknown."""
    if value is None:
        return []
    names = (
        list(PEERS) if value in ("", "all") else [n.strip() for n in value.split(",") if n.strip()]
    )
    unknown = [n for n in names if n not in PEERS]
    if unknown:
        raise ValueError(f"unknown peers {unknown}; choose from {list(PEERS)}")
    return names


# -- python -m bench.peers install|check -----------------------------------------------------


def _paired() -> list[str]:
    out = []
    for pkg in PAIRED:
        try:
            out.append(f"{pkg}=={metadata.version(pkg)}")
        except metadata.PackageNotFoundError:
            out.append(pkg)
    return out


def install(spec: PeerSpec) -> None:
    """A venv at ``spec.venv`` with the peer's packages and this ONNX Runtime / tokenizers."""
    if not (spec.venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(spec.venv)], check=True)
    pip = [str(spec.venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check"]
    subprocess.run([*pip, *spec.requirements, *_paired()], check=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m bench.peers",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("action", choices=["install", "check"])
    p.add_argument("peers", nargs="*", default=[], help=f"of {list(PEERS)} (default: all)")
    args = p.parse_args(argv)
    names = parse_names(",".join(args.peers) or "all")
    for n in names:
        if args.action == "install":
            install(PEERS[n])
        python, why = find_python(PEERS[n])
        print(f"{n}: {python or why}")


if __name__ == "__main__":
    main()


# -- the report's section --------------------------------------------------------------------


def _num(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a and b else "-"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _server_cpu_ms(rec: dict[str, Any], groups: Sequence[str]) -> float | None:
    """CPU milliseconds per item the serving side (``groups``) took during ``online``."""
    cpu = (rec.get("cpu") or {}).get("online")
    if not cpu or not cpu.get("items"):
        return None
    return float(1000 * sum(cpu.get(g, 0.0) for g in groups) / cpu["items"])


def comparison(m: dict[str, Any], rec: dict[str, Any]) -> dict[str, float | None]:
    """inferq's figure over the peer's: items/s (above 1: inferq serves more) and light-load
    latency and added latency (below 1: inferq is faster)."""

    def over(a: float | None, b: float | None) -> float | None:
        return float(f"{a / b:.3g}") if a and b else None

    io, po = m.get("online") or {}, rec.get("online") or {}
    il, pl = m.get("online_light") or {}, rec.get("online_light") or {}
    return {
        "items_per_s": over(io.get("items_per_s"), po.get("items_per_s")),
        "online_p99_ms": over(io.get("p99_ms"), po.get("p99_ms")),
        "light_p50_ms": over(il.get("p50_ms"), pl.get("p50_ms")),
        "light_p99_ms": over(il.get("p99_ms"), pl.get("p99_ms")),
        "added_p50_ms": over(il.get("added_p50_ms"), pl.get("added_p50_ms")),
    }


def _row(label: str, m: dict[str, Any], rec: dict[str, Any], cpu: float | None) -> str:
    o, lt = rec.get("online") or {}, rec.get("online_light") or {}
    raw = max((m.get(k) or {}).get("best") or 0.0 for k in ("raw", "raw_1proc")) or None
    vs = comparison(m, rec) if rec is not m else {}
    lat = f"{_num(o.get('p50_ms'))} / {_num(o.get('p95_ms'))} / {_num(o.get('p99_ms'))}"
    light = f"{_num(lt.get('p50_ms'))} / {_num(lt.get('p99_ms'))}"
    added = f"{_num(lt.get('added_p50_ms'))} / {_num(lt.get('added_p99_ms'))}"
    mine = "1" if rec is m else f"{_num(vs.get('items_per_s'), 2)}"
    lmine = (
        "1 / 1"
        if rec is m
        else f"{_num(vs.get('light_p50_ms'), 2)} / {_num(vs.get('light_p99_ms'), 2)}"
    )
    return (
        f"| {label} | {_num(o.get('items_per_s'))} | {lat} | {_num(o.get('mean_batch'), 2)} | "
        f"{_ratio(o.get('items_per_s'), raw)} | {light} | {added} | {mine} | {lmine} | "
        f"{_num(cpu, 2)} |"
    )


def _settings_line(peer: str, rec: dict[str, Any]) -> str:
    server = rec.get("server") or {}
    settings = server.get("settings") or rec.get("settings") or {}
    versions = {k: v for k, v in (server.get("versions") or {}).items() if k != "executable"}
    if rec.get("server_version"):
        versions = {"tritonserver": rec["server_version"], **versions}
    listening = rec.get("listening") or []
    bad = rec.get("not_loopback") or []
    where = (
        f"listening on {len(listening)} sockets, all on loopback"
        if not bad
        else f"**listening beyond loopback: {', '.join(bad)}**"
    )
    probe = rec.get("probe") or {}
    parts = [
        f"- **{peer}** ({rec.get('title')}): " + ", ".join(f"{k}={v}" for k, v in settings.items()),
        f"  - endpoint `{rec.get('endpoint')}`; {where}; started in {rec.get('startup_s')} s "
        f"from `{rec.get('python')}`",
        f"  - versions: {', '.join(f'{k} {v}' for k, v in versions.items())}",
        f"  - probe: {probe.get('values')} values, max |difference| from inferq's adapter "
        f"{probe.get('max_abs_diff_vs_inferq')}",
    ]
    if peer == "ray":
        parts.append(
            "  - max_ongoing_requests raised from Ray Serve's default of 5 (which caps every "
            "batch at 5 requests per replica) to "
            f"{settings.get('max_ongoing_requests')} per replica"
        )
    return "\n".join(parts)


INFERQ_SERVING = ("api", "workers", "postgres", "redis")


def markdown(models: dict[str, Any]) -> list[str]:
    """The report's "inferq beside the peers" section (nothing without ``--peers``)."""
    lines: list[str] = []
    for name, m in models.items():
        peers = m.get("peers")
        if not peers:
            continue
        lines += [
            f"### inferq beside the peers: {name}",
            "",
            "The same ONNX file and ONNX Runtime settings everywhere (inferq's adapter: tokenizer, "
            "padding, session options), the same clients: `online` "
            f"({(m.get('online') or {}).get('clients', '?')} closed-loop clients, one input per "
            "request) and `online-light` (Poisson, ~10 % of each system's own `online`); added = "
            f"latency minus the model's single-item time ({_num(m.get('single_item_ms'), 3)} ms).",
            "",
            "| system | online items/s | online p50 / p95 / p99 ms | mean batch | online/raw | "
            "light p50 / p99 ms | light added p50 / p99 ms | inferq/peer items/s | "
            "inferq/peer light p50 / p99 | serving CPU ms/item |",
            "| --- | ---: | --- | ---: | ---: | --- | --- | ---: | --- | ---: |",
            _row("inferq", m, m, _server_cpu_ms(m, INFERQ_SERVING)),
        ]
        for peer, rec in peers.items():
            if "skipped" in rec:
                lines.append(f"| {peer} | skipped: {_cell(rec['skipped'])} | | | | | | | | |")
            else:
                lines.append(_row(peer, m, rec, _server_cpu_ms(rec, ("peer",))))
        lines += [
            "",
            "inferq/peer items/s above 1: inferq serves more; inferq/peer latency below 1: inferq "
            "answers sooner. Serving CPU: inferq's API, workers, Postgres and Redis; a peer's "
            "process tree. Peer settings (all of them; batching budget from the model's "
            "manifest, replicas and threads as inferq's workers):",
            "",
        ]
        for peer, rec in peers.items():
            if "skipped" not in rec:
                lines.append(_settings_line(peer, rec))
        lines.append("")
    return lines
