"""Every metric the Grafana dashboard queries is served (by a worker or the API) and moves under
load: a few hundred predictions, a failing webhook, a worker lost mid-work, a cancellation."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.db.models import Prediction
from tests.conftest import StackFactory
from tests.support.procs import free_port, start_worker
from tests.support.receiver import Receiver

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "inferq.json"
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "or", "and"}
PROMQL_WORDS |= {"unless", "bool", "offset", "le", "inf", "nan"}
MARKER = "metrics-test-poison"

Samples = dict[str, dict[frozenset[tuple[str, str]], float]]


def metric_names(expr: str) -> set[str]:
    """The metric (sample) names a PromQL expression reads."""
    expr = re.sub(r'"[^"]*"', "", expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    found = re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b(?!\s*\()", expr)
    return {n for n in found if n.lower() not in PROMQL_WORDS}


def dashboard_metrics() -> dict[str, set[str]]:
    """Panel title -> the metric names its targets query."""
    doc = json.loads(DASHBOARD.read_text())
    out: dict[str, set[str]] = {}
    for panel in doc["panels"]:
        for target in panel.get("targets", []):
            out.setdefault(panel["title"], set()).update(metric_names(target["expr"]))
    return out


def test_metric_names_of_promql() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le, model) (rate(inferq_queue_wait_seconds_bucket"
        '{model=~"a.*"}[5m]))) / sum(rate(x_total[1m])) or vector(0)'
    )
    assert metric_names(expr) == {"inferq_queue_wait_seconds_bucket", "x_total"}
    assert all(dashboard_metrics().values()), "a panel queries no metric"


def scrape(url: str) -> Samples:
    text = httpx.get(url, timeout=10).text
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[frozenset(s.labels.items())] = s.value
    return out


def moved(name: str, scrapes: list[Samples]) -> bool:
    """Served, and either changed between two scrapes or above 0 in one."""
    series = [sc.get(name, {}) for sc in scrapes]
    if any(v > 0 for s in series for v in s.values()):
        return True
    return len({tuple(sorted(s.items())) for s in series}) > 1


def value(samples: Samples, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for k, v in samples.get(name, {}).items() if want <= set(k))


pytestmark = pytest.mark.slow


def test_dashboard_metrics_exist_and_move(
    make_stack: StackFactory,
    redis_url: str,
    receiver: Receiver,
    pg_sessions: sessionmaker[Session],
) -> None:
    base_port = free_port()
    stack = make_stack(
        redis_url,
        workers=0,
        lease_seconds=2,
        worker_metrics_port=base_port,
        queue_metrics_ttl_seconds=0,
        webhook_max_attempts=2,
        webhook_backoff_base_seconds=0.05,
    )
    receiver.responder = lambda req: (500, {"no": "thanks"}) if req.path == "/fail" else None
    # A worker that dies on its first input: its lease runs out, the sweeper hands it on.
    victim_env = {**stack.env, "INFERQ_WORKER_METRICS_PORT": "0", "INFERQ_TEST_CRASH_ON": MARKER}
    victim = start_worker(victim_env, stack.tmp / "victim.log", queues=stack.queues(), name="v")
    stack.procs.append(victim)
    api_url = f"{stack.base_url}/metrics"
    api_scrapes = [scrape(api_url)]
    with stack.client() as c:
        post = c.post("/v1/predictions", json={"model": "ticket-triage", "input": {"text": MARKER}})
        assert post.status_code == 202, post.text
        end = time.monotonic() + 30
        while victim.alive():
            assert time.monotonic() < end, "the victim did not crash"
            time.sleep(0.1)
        # The load, accepted while no worker runs: it waits in the queue.
        features = [{"features": [float(i % 7)] * 12} for i in range(300)]
        for part, extra in (
            (features[:150], {}),
            (features[150:250], {"callback_url": f"{receiver.url}/ok"}),
            (features[250:], {}),
            (features[:1], {"callback_url": f"{receiver.url}/fail"}),
            (features[:5], {"deadline_s": 0.5}),
        ):
            r = c.post("/v1/predictions", json={"model": "churn-risk", "inputs": part, **extra})
            assert r.status_code == 202, r.text
        texts = [{"text": "refund " * (1 + i * 3) + "please"} for i in range(20)]
        r = c.post("/v1/predictions", json={"model": "ticket-triage", "inputs": texts})
        assert r.status_code == 202, r.text
        one = c.post("/v1/predictions", json={"model": "churn-risk", "input": features[0]})
        assert c.delete(f"/v1/predictions/{one.json()['id']}").status_code == 200
        time.sleep(0.6)  # the deadlines pass
        api_scrapes.append(scrape(api_url))
        worker = stack.start_worker("survivor")
        stack.start_beat()
        worker_url = f"http://127.0.0.1:{base_port}/metrics"
        worker_scrapes = [scrape(worker_url)]
        end = time.monotonic() + 120
        while True:
            with pg_sessions() as s:
                live = s.scalar(
                    select(func.count())
                    .select_from(Prediction)
                    .where(Prediction.status.in_(["queued", "running"]))
                )
            if not live and len([q for q in receiver.requests if q.path == "/fail"]) >= 2:
                break
            assert time.monotonic() < end, f"{live} predictions still live"
            time.sleep(0.5)
        receiver.wait_for(lambda reqs: len([q for q in reqs if q.path == "/ok"]) >= 100)
        time.sleep(1.5)  # the last attempts are counted after they are recorded
    worker_scrapes.append(scrape(worker_url))
    api_scrapes.append(scrape(api_url))
    assert worker.alive()

    missing: dict[str, list[str]] = {}
    still: dict[str, list[str]] = {}
    for title, names in dashboard_metrics().items():
        for name in sorted(names):
            where = [s for s in (worker_scrapes, api_scrapes) if name in s[-1]]
            if not where:
                missing.setdefault(title, []).append(name)
            elif not any(moved(name, s) for s in where):
                still.setdefault(title, []).append(name)
    assert not missing, f"not served: {missing}"
    assert not still, f"served but never moved: {still}"

    w, a = worker_scrapes[-1], api_scrapes
    assert value(w, "inferq_items_total", model="churn-risk", outcome="succeeded") >= 250
    assert value(w, "inferq_items_total", outcome="expired") == 5
    assert value(a[-1], "inferq_items_total", outcome="cancelled") == 1
    assert value(w, "inferq_lease_expiries_total", model="ticket-triage") >= 1
    assert value(w, "inferq_sweeper_republished_total", model="ticket-triage") >= 1
    assert value(w, "inferq_delivery_attempts_total", kind="webhook", outcome="delivered") >= 100
    assert value(w, "inferq_delivery_attempts_total", kind="webhook", outcome="retry") == 1
    assert value(w, "inferq_delivery_attempts_total", kind="webhook", outcome="dead") == 1
    assert value(w, "inferq_delivery_lag_seconds_count", kind="webhook") >= 100
    info = value(w, "inferq_runtime_info", model="churn-risk", provider="CPUExecutionProvider")
    assert info == 1
    # the autoscaling signal saw the backlog, then the drain
    assert value(a[1], "inferq_queued_inputs", model="churn-risk") >= 300
    assert value(a[1], "inferq_queue_oldest_age_seconds", model="churn-risk") > 0.5
    assert value(a[-1], "inferq_queued_inputs", model="churn-risk") == 0
    tokens = w["inferq_batch_padded_tokens_sum"]
    sizes = w["inferq_batch_size_sum"]
    triage = frozenset({("model", "ticket-triage")})
    assert tokens[triage] > sizes[triage]  # text: padded to the longest, more than one each
