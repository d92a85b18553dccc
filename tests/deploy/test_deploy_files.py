"""The deployment files: compose runs without a GPU, every service is health-checked, the image
runs as a user without torch."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def load(name: str) -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / name).read_text())
    assert isinstance(doc, dict)
    return doc


def devices(service: dict[str, Any]) -> list[dict[str, Any]]:
    reservations = service.get("deploy", {}).get("resources", {}).get("reservations", {})
    return list(reservations.get("devices", []))


def test_every_service_has_a_healthcheck() -> None:
    services = load("docker-compose.yml")["services"]
    assert {"postgres", "redis", "rabbitmq", "release", "api", "worker", "beat"} <= set(services)
    for name, svc in services.items():
        check = svc.get("healthcheck")
        assert check, f"{name} has no healthcheck"
        if check.get("disable"):
            # only a one-off may go without one (it exits; nothing to watch)
            assert svc.get("restart") == "no", f"{name} disables its healthcheck"
            continue
        test = check["test"]
        assert test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, name
    joined = {n: " ".join(s["healthcheck"].get("test", [])) for n, s in services.items()}
    assert "healthcheck api" in joined["api"]
    assert "healthcheck worker" in joined["worker"]
    assert "healthcheck beat" in joined["beat"]
    assert "redis-cli ping" in joined["redis"]
    assert "rabbitmq-diagnostics -q ping" in joined["rabbitmq"]


def test_gpu_is_opt_in() -> None:
    base = load("docker-compose.yml")["services"]
    assert not [n for n, s in base.items() if devices(s)], "the base file reserves a device"
    assert "nvidia" not in (ROOT / "docker-compose.yml").read_text().split("# ")[0]
    gpu = load("docker-compose.gpu.yml")["services"]
    (reserved,) = devices(gpu["worker"])
    assert reserved["driver"] == "nvidia" and "gpu" in reserved["capabilities"]
    assert gpu["worker"]["build"]["args"]["ORT"] == "onnxruntime-gpu"
    # the override only adds to services the base file defines
    assert set(gpu) <= set(base)


def dockerfile_stages() -> list[list[str]]:
    """The Dockerfile's stages, each a list of instructions (continuation lines joined)."""
    text = (ROOT / "Dockerfile").read_text()
    lines = [ln for ln in text.replace("\\\n", " ").splitlines() if not ln.lstrip().startswith("#")]
    stages: list[list[str]] = []
    for line in lines:
        if not line.strip():
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line.strip())
    return stages


def test_runtime_image_runs_as_a_user_without_torch() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2, "a builder stage and a runtime stage"
    final = stages[-1]
    users = [i.split()[1] for i in final if i.upper().startswith("USER ")]
    assert users and users[-1] not in ("root", "0"), users
    assert any(i.upper().startswith("HEALTHCHECK ") for i in final)
    body = "\n".join(final).lower()
    assert "torch" not in body and "[models]" not in body
    installs = [i for i in final if re.search(r"\bpip install\b", i)]
    assert installs and all(".[" not in i for i in installs), installs
    # the models come built from an earlier stage
    assert any(i.upper().startswith("COPY --FROM=") for i in final)
    assert "inferq models build" in "\n".join(stages[0])


def compose_available() -> bool:
    if shutil.which("docker") is None:
        return False
    done = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
    return done.returncode == 0


@pytest.mark.skipif(
    not compose_available(), reason="the docker CLI here has no compose plugin (docker compose)"
)
@pytest.mark.parametrize(
    "files", [["docker-compose.yml"], ["docker-compose.yml", "docker-compose.gpu.yml"]]
)
def test_docker_compose_config(files: list[str]) -> None:
    argv = ["docker", "compose"] + [a for f in files for a in ("-f", f)]
    done = subprocess.run(
        [*argv, "--profile", "rabbitmq", "config", "--quiet"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin:/usr/local/bin", "INFERQ_WEBHOOK_SECRET": "x"},
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def test_prometheus_scrapes_the_api_and_the_workers_ports() -> None:
    jobs = {j["job_name"]: j for j in load("deploy/prometheus.yml")["scrape_configs"]}
    worker_env = load("docker-compose.yml")["services"]["worker"]["environment"]
    (worker_sd,) = jobs["inferq-worker"]["dns_sd_configs"]
    assert worker_sd["port"] == int(worker_env["INFERQ_WORKER_METRICS_PORT"])
    (api_sd,) = jobs["inferq-api"]["dns_sd_configs"]
    assert api_sd["port"] == 8000
    grafana = load("docker-compose.yml")["services"]["grafana"]
    assert any("deploy/grafana/inferq.json" in v for v in grafana["volumes"])
