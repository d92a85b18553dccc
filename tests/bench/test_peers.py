"""``python -m bench --peers`` without the peers: what is pure logic, and the "missing" path.

No peer server is started here (they need ray / nvidia-pytriton); no test asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import peers, scenarios
from bench.__main__ import parse
from bench.report import write_report
from bench.stack import StackConfig
from tests.support.receiver import Receiver


def test_cli_takes_all_peers_some_or_none_and_refuses_unknown_ones(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert parse([]).peers == []
    assert parse(["--peers"]).peers == list(peers.PEERS)
    assert parse(["--peers", "ray"]).peers == ["ray"]
    assert parse(["--peers", "ray,triton", "--quick"]).peers == ["ray", "triton"]
    with pytest.raises(SystemExit):
        parse(["--peers", "ray,torchserve"])
    assert "unknown peers ['torchserve']" in capsys.readouterr().err


def test_a_missing_peer_is_skipped_with_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = peers.PeerSpec(
        "ghost",
        "A peer nobody installed",
        "bench.peer_servers.ghost_server",
        ("no_such_module_for_the_bench",),
        ("ghost-serve>=1",),
    )
    monkeypatch.setitem(peers.PEERS, "ghost", missing)
    monkeypatch.setattr(peers, "VENVS", tmp_path / "peers-venv")
    cfg = StackConfig("sqlite://", "memory://", tmp_path, ["m"], log_dir=tmp_path)
    args = argparse.Namespace(peers=["ghost"])
    res: dict[str, Any] = {"m": {"kind": "text-embedding"}, "t": {"kind": "tabular"}}
    peers.phase_peers(cfg, args, res)
    for m in res.values():
        why = m["peers"]["ghost"]["skipped"]
        assert why.startswith("A peer nobody installed is not installed (")
        assert f"{tmp_path}/peers-venv/ghost/bin/python: absent" in why
        assert "No module named 'no_such_module_for_the_bench'" in why  # this interpreter's
        assert "python -m bench.peers install ghost" in why and "ghost-serve>=1" in why
        assert "cannot share inferq's environment" in why
    assert "pip install -e '.[peers]'" in peers.PEERS["ray"].install_hint
    assert "bench.peers install triton" in peers.PEERS["triton"].install_hint


def test_a_model_kind_the_peers_do_not_serve_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(peers, "find_python", lambda spec: (sys.executable, ""))
    cfg = StackConfig("sqlite://", "memory://", tmp_path, ["m"], log_dir=tmp_path)
    res: dict[str, Any] = {"triage": {"kind": "text-classification"}}
    peers.phase_peers(cfg, argparse.Namespace(peers=["ray"]), res)
    assert res["triage"]["peers"]["ray"]["skipped"] == "kind text-classification not served"


def test_find_python_takes_the_first_interpreter_that_imports_the_peer(tmp_path: Path) -> None:
    spec = peers.PeerSpec("x", "X", "bench.peer_servers.x", ("json",), ())
    python, why = peers.find_python(spec, [tmp_path / "absent", Path(sys.executable)])
    assert (python, why) == (sys.executable, "")


def test_requests_and_answers_of_each_peer() -> None:
    assert peers.triton_body({"text": "hi"}) == {
        "inputs": [{"name": "text", "shape": [1, 1], "datatype": "BYTES", "data": ["hi"]}]
    }
    assert peers.triton_body({"features": [1.0, 2.0]})["inputs"][0]["shape"] == [1, 2]
    answer = {
        "outputs": [
            {"name": "embedding", "datatype": "FP32", "shape": [1, 2], "data": [0.5, 0.25]},
            {"name": "batch_size", "datatype": "INT32", "shape": [1, 1], "data": [7]},
        ]
    }
    assert peers.triton_parse(answer) == ([0.5, 0.25], 7)
    assert peers.ray_body({"text": "hi"}) == {"text": "hi"}
    assert peers.ray_parse({"embedding": [0.5], "batch_size": 3}) == ([0.5], 3)
    assert peers.ray_parse({"probability": 0.9}) == ([0.9], None)


def test_the_online_clients_drive_a_peer_through_its_request(receiver: Receiver) -> None:
    """``scenarios.online`` and ``online_light`` with a peer's request: the same loops as
    inferq's, only what is sent differs."""
    answer = {"outputs": [{"name": "batch_size", "data": [2]}, {"name": "embedding", "data": [1]}]}
    receiver.responder = lambda req: (200, answer)
    path = "/v2/models/minilm-embed/infer"
    items = [{"text": f"t{i}"} for i in range(6)]
    request = peers.peer_request("triton", path)
    o = scenarios.online(receiver.url, "minilm-embed", items, clients=2, warmup=0, request=request)
    assert o["n"] == 6 and o["mean_batch"] == 2 and o["statuses"] == {"succeeded": 6}
    lt = scenarios.online_light(
        receiver.url, "minilm-embed", items[:3], rate=200.0, single_item_ms=1.0, request=request
    )
    assert lt["n"] == 3 and lt["added_p50_ms"] == round(lt["p50_ms"] - 1.0, 2)
    sent = [r.json()["inputs"][0]["data"][0] for r in receiver.requests]
    assert sorted(sent) == sorted([f"t{i}" for i in range(6)] + ["t0", "t1", "t2"])
    assert {r.path for r in receiver.requests} == {path}
    receiver.responder = lambda req: (400, {"error": "bad"})
    with pytest.raises(scenarios.BenchError, match="answered 400"):
        scenarios.online(receiver.url, "m", items[:1], clients=1, warmup=0, request=request)


def test_listening_sees_this_process_socket_and_tells_loopback_apart() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert f"127.0.0.1:{port}" in peers.listening([os.getpid()])
    assert peers.is_loopback("127.0.0.1:80") and peers.is_loopback("::1:80")
    assert peers.is_loopback("::ffff:127.0.0.1:80")
    assert not peers.is_loopback("0.0.0.0:80") and not peers.is_loopback(":::80")
    assert not peers.is_loopback("192.0.2.2:52365")
    assert peers._addr("0100007F:1F90") == "127.0.0.1:8080"
    assert peers._addr("00000000000000000000000001000000:0050") == "::1:80"


def test_reap_kills_only_what_is_left_of_the_processes_it_saw() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        seen = peers.tree(child.pid)
        assert list(seen) == [child.pid]
        stale = {child.pid: "1"}  # a start time that is not this process's: a reused PID
        assert peers.reap(stale, grace=0) == []
        assert child.poll() is None
        assert peers.reap(seen, grace=0) == [child.pid]
        assert child.wait(10) == -9
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def _peer_record(items_per_s: float, light_p50: float) -> dict[str, Any]:
    return {
        "title": "Ray Serve (@serve.batch)",
        "python": "/venv/bin/python",
        "endpoint": "POST http://127.0.0.1:1234/minilm-embed",
        "startup_s": 20.0,
        "listening": ["127.0.0.1:1234", "::ffff:127.0.0.1:5"],
        "not_loopback": [],
        "probe": {"values": 384, "max_abs_diff_vs_inferq": 0.0},
        "server": {
            "settings": {"num_replicas": 2, "max_ongoing_requests": 64, "max_batch_size": 32},
            "versions": {"ray": "2.60.0", "executable": "/venv/bin/python"},
        },
        "online": {
            "items_per_s": items_per_s,
            "p50_ms": 700.0,
            "p95_ms": 900.0,
            "p99_ms": 1000.0,
            "mean_batch": 16.0,
            "clients": 64,
        },
        "online_light": {
            "p50_ms": light_p50,
            "p99_ms": 50.0,
            "added_p50_ms": light_p50 - 10.0,
            "added_p99_ms": 40.0,
        },
        "cpu": {"online": {"peer": 2.0, "client": 1.0, "items": 100}},
    }


def _doc() -> dict[str, Any]:
    model = {
        "kind": "text-embedding",
        "raw": {
            "procs": 2,
            "provider": "CPUExecutionProvider",
            "items_per_s": {"8": 400.0},
            "best_batch": 8,
            "best": 400.0,
        },
        "single_item_ms": 10.0,
        "online": {
            "items_per_s": 100.0,
            "p50_ms": 600.0,
            "p95_ms": 800.0,
            "p99_ms": 900.0,
            "mean_batch": 12.0,
            "clients": 64,
        },
        "online_light": {
            "rate_per_s": 10.0,
            "p50_ms": 30.0,
            "p95_ms": 50.0,
            "p99_ms": 60.0,
            "added_p50_ms": 20.0,
            "added_p99_ms": 50.0,
        },
        "cpu": {
            "online": {
                "api": 1.0,
                "workers": 2.0,
                "postgres": 0.5,
                "redis": 0.5,
                "client": 1.0,
                "machine_busy": 5.0,
                "machine_capacity": 10.0,
                "items": 100,
            }
        },
        "peers": {
            "ray": _peer_record(50.0, 40.0),
            "triton": {"title": "NVIDIA Triton", "skipped": "not installed | see hint"},
        },
    }
    return {
        "meta": {
            "stamp": "peers",
            "started_at": "2026-01-01T00:00:00+00:00",
            "command": "python -m bench --peers",
            "machine": {
                "cpu_model": "Test CPU",
                "cores": 2,
                "cores_usable": 2,
                "memory_gib": 4.0,
                "gpus": [],
                "python": "3.11",
            },
            "versions": {},
            "settings": {},
        },
        "models": {"minilm-embed": model, "churn-risk": {"kind": "tabular"}},
    }


def test_report_puts_inferq_beside_the_peers_with_ratios_and_every_setting(
    tmp_path: Path,
) -> None:
    json_path, _, text = write_report(_doc(), tmp_path)
    assert "### inferq beside the peers: minilm-embed" in text
    assert "inferq beside the peers: churn-risk" not in text  # no peers ran for it
    assert (
        "| inferq | 100.0 | 600.0 / 800.0 / 900.0 | 12.00 | 0.25 | 30.0 / 60.0 | 20.0 / 50.0 | "
        "1 | 1 / 1 | 40.00 |"
    ) in text
    assert (
        "| ray | 50.0 | 700.0 / 900.0 / 1,000.0 | 16.00 | 0.12 | 40.0 / 50.0 | 30.0 / 40.0 | "
        "2.00 | 0.75 / 1.20 | 20.00 |"
    ) in text
    assert "| triton | skipped: not installed \\| see hint | | | | | | | | |" in text
    assert "- **ray** (Ray Serve (@serve.batch)): num_replicas=2, max_ongoing_requests=64" in text
    assert "max_ongoing_requests raised from Ray Serve's default of 5" in text
    assert "listening on 2 sockets, all on loopback" in text
    assert "versions: ray 2.60.0" in text and "/venv/bin/python`" in text
    doc = json.loads(json_path.read_text())
    assert doc["models"]["minilm-embed"]["peers"]["triton"]["skipped"].startswith("not installed")


def test_comparison_is_inferq_over_the_peer() -> None:
    m = _doc()["models"]["minilm-embed"]
    assert peers.comparison(m, m["peers"]["ray"]) == {
        "items_per_s": 2.0,
        "online_p99_ms": 0.9,
        "light_p50_ms": 0.75,
        "light_p99_ms": 1.2,
        "added_p50_ms": 0.667,
    }
    assert peers.comparison({}, {})["items_per_s"] is None


def test_peer_settings_come_from_the_manifest_and_inferq_threads(tmp_path: Path) -> None:
    cfg = StackConfig("sqlite://", "memory://", tmp_path, [], workers=2, intra_op_threads=1)
    m = {"batching": {"max_batch_size": 32, "max_delay_ms": 5.0}}
    s = peers.PeerSettings.for_model(m, cfg, clients=64)
    assert (s.max_batch_size, s.max_delay_ms, s.replicas, s.intra_op_threads) == (32, 5.0, 2, 1)
    assert s.max_ongoing_requests == 64 and s.preferred_batch_sizes == (16, 32)
    argv = peers.server_argv(peers.PEERS["ray"], "py", tmp_path, "minilm-embed", 9, s)
    assert argv[:3] == ["py", "-m", "bench.peer_servers.ray_server"]
    assert argv[argv.index("--max-ongoing") + 1] == "64"
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    argv = peers.server_argv(peers.PEERS["triton"], "py", tmp_path, "minilm-embed", 9, s)
    assert argv[argv.index("--preferred-batch-sizes") + 1] == "16,32"
