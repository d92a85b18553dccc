"""The dynamic batcher with a stub runtime and a clock the test moves by hand."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from app.batching import BatchItem, DynamicBatcher, Outcome


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Stub:
    """Doubles numbers; raises on 'boom'; records every batch it is given."""

    def __init__(self) -> None:
        self.batches: list[list[Any]] = []

    def __call__(self, payloads: list[Any]) -> Sequence[Any]:
        self.batches.append(list(payloads))
        if "boom" in payloads:
            raise ValueError("cannot run boom")
        return [p * 2 for p in payloads]


def make(clock: Clock, stub: Stub | None = None, **kw: Any) -> tuple[DynamicBatcher, Stub, list]:
    stub = stub or Stub()
    stored: list[tuple[str, Outcome]] = []
    kw.setdefault("max_batch_size", 4)
    kw.setdefault("max_delay_ms", 10)
    b = DynamicBatcher(
        stub,
        clock=clock,
        sink=lambda items, outs: stored.extend(zip([i.key for i in items], outs, strict=False)),
        **kw,
    )
    return b, stub, stored


def test_full_batch_leaves_at_once() -> None:
    clock = Clock()
    b, _stub, _ = make(clock)
    futures = [b.submit(BatchItem(key=str(i), payload=i)) for i in range(4)]
    batch = b.take_batch(timeout=0)
    assert batch is not None and [i.payload for i in batch] == [0, 1, 2, 3]
    b.process(batch)
    assert [f.result().value for f in futures] == [0, 2, 4, 6]
    assert all(f.result().batch_size == 4 for f in futures)


def test_partial_batch_waits_for_max_delay() -> None:
    clock = Clock()
    b, _, _ = make(clock)
    b.submit(BatchItem(key="a", payload=1))
    clock.advance(0.005)
    assert b.take_batch(timeout=0) is None
    clock.advance(0.006)
    batch = b.take_batch(timeout=0)
    assert batch is not None and len(batch) == 1


def test_time_spent_queued_before_the_batcher_counts_against_max_delay() -> None:
    clock = Clock()
    b, _, _ = make(clock)  # max_delay 10 ms
    b.submit(BatchItem(key="late", payload=1), waited=0.012)  # 12 ms in the broker already
    batch = b.take_batch(timeout=0)
    assert batch is not None and [i.key for i in batch] == ["late"]
    b.submit(BatchItem(key="some", payload=2), waited=0.004)
    clock.advance(0.005)
    assert b.take_batch(timeout=0) is None  # 9 ms so far
    clock.advance(0.0015)
    batch = b.take_batch(timeout=0)
    assert batch is not None and [i.key for i in batch] == ["some"]


def test_a_negative_wait_counts_as_none_and_the_longest_waiting_goes_first() -> None:
    clock = Clock()
    b, _, _ = make(clock, max_batch_size=2)
    b.submit(BatchItem(key="skewed", payload=1), waited=-5.0)  # another host's clock ahead
    clock.advance(0.009)
    assert b.take_batch(timeout=0) is None
    b.submit(BatchItem(key="old", payload=2), waited=0.5)
    b.submit(BatchItem(key="older", payload=3), waited=0.8)
    first = b.take_batch(timeout=0)
    assert first is not None and [i.key for i in first] == ["older", "old"]
    clock.advance(0.002)
    second = b.take_batch(timeout=0)
    assert second is not None and [i.key for i in second] == ["skewed"]


def test_length_buckets_keep_padding_small() -> None:
    clock = Clock()
    b, _, _ = make(clock, length_buckets=[16, 64, 256])
    for i, n in enumerate([5, 200, 7, 180, 9, 10]):
        b.submit(BatchItem(key=str(i), payload=n, length=n))
    batch = b.take_batch(timeout=0)
    assert batch is not None and sorted(i.length for i in batch) == [5, 7, 9, 10]
    clock.advance(0.02)
    rest = b.take_batch(timeout=0)
    assert rest is not None and sorted(i.length for i in rest) == [180, 200]


def test_priority_high_before_normal_before_low() -> None:
    clock = Clock()
    b, _, _ = make(clock, max_batch_size=2)
    b.submit(BatchItem(key="low", payload=1, priority=2))
    b.submit(BatchItem(key="normal", payload=2, priority=1))
    b.submit(BatchItem(key="high", payload=3, priority=0))
    clock.advance(0.02)
    first = b.take_batch(timeout=0)
    assert first is not None and [i.key for i in first] == ["high", "normal"]
    second = b.take_batch(timeout=0)
    assert second is not None and [i.key for i in second] == ["low"]


def test_expired_items_never_run() -> None:
    clock = Clock()
    b, stub, stored = make(clock)
    late = b.submit(BatchItem(key="late", payload=1, deadline=clock() + 0.001))
    ok = b.submit(BatchItem(key="ok", payload=2))
    clock.advance(0.05)
    batch = b.take_batch(timeout=0)
    assert late.result().status == "expired"
    assert batch is not None and [i.key for i in batch] == ["ok"]
    b.process(batch)
    assert ok.result().status == "succeeded"
    assert all(1 not in p for p in stub.batches)
    assert ("late", late.result()) in stored


def test_refused_items_are_skipped() -> None:
    clock = Clock()
    stub = Stub()
    b = DynamicBatcher(
        stub,
        max_batch_size=3,
        max_delay_ms=0,
        clock=clock,
        admit=lambda items: {i.key for i in items if i.key != "cancelled"},
    )
    futures = {k: b.submit(BatchItem(key=k, payload=1)) for k in ("a", "cancelled", "b")}
    batch = b.take_batch(timeout=0)
    assert batch is not None
    b.process(batch)
    assert futures["cancelled"].result().status == "skipped"
    assert stub.batches == [[1, 1]]


def test_a_batch_that_raises_is_bisected_to_the_bad_input() -> None:
    clock = Clock()
    b, _stub, stored = make(clock, max_batch_size=8)
    payloads = [1, 2, 3, "boom", 5, 6, 7, 8]
    futures = [b.submit(BatchItem(key=str(i), payload=p)) for i, p in enumerate(payloads)]
    batch = b.take_batch(timeout=0)
    assert batch is not None
    b.process(batch)
    results = [f.result() for f in futures]
    assert [r.status for r in results] == ["succeeded"] * 3 + ["failed"] + ["succeeded"] * 4
    assert results[3].error_code == "inference_failed" and "boom" in (
        results[3].error_message or ""
    )
    assert results[0].value == 2 and results[7].value == 16
    assert len(stored) == 8  # one sink call per batch, every item in it


def test_output_count_mismatch_fails_every_item_not_silently() -> None:
    clock = Clock()
    b = DynamicBatcher(lambda ps: [0], max_batch_size=2, max_delay_ms=0, clock=clock)
    futures = [b.submit(BatchItem(key=str(i), payload=i)) for i in range(2)]
    batch = b.take_batch(timeout=0)
    assert batch is not None
    b.process(batch)
    # bisection isolates each item; a single item gets exactly one output, so both succeed
    # only if the runtime is consistent: here it is (one output for one input).
    assert [f.result().status for f in futures] == ["succeeded", "succeeded"]

    bad = DynamicBatcher(lambda ps: [], max_batch_size=2, max_delay_ms=0, clock=clock)
    f = bad.submit(BatchItem(key="x", payload=1))
    batch = bad.take_batch(timeout=0)
    assert batch is not None
    bad.process(batch)
    assert f.result().status == "failed"
    assert "0 outputs for 1 inputs" in (f.result().error_message or "")


def test_store_failure_reaches_every_waiter() -> None:
    clock = Clock()

    def broken_sink(items: list[BatchItem], outs: list[Outcome]) -> None:
        raise ConnectionError("database down")

    b = DynamicBatcher(Stub(), max_batch_size=2, max_delay_ms=0, clock=clock, sink=broken_sink)
    futures = [b.submit(BatchItem(key=str(i), payload=i)) for i in range(2)]
    batch = b.take_batch(timeout=0)
    assert batch is not None
    b.process(batch)
    for f in futures:
        with pytest.raises(ConnectionError):
            f.result()


def test_knobs_are_checked() -> None:
    with pytest.raises(ValueError):
        DynamicBatcher(Stub(), max_batch_size=0, max_delay_ms=1)
    with pytest.raises(ValueError):
        DynamicBatcher(Stub(), max_batch_size=1, max_delay_ms=-1)


def test_runner_threads_drain_the_queue() -> None:
    b = DynamicBatcher(Stub(), max_batch_size=16, max_delay_ms=1)
    b.start(2)
    try:
        futures = [b.submit(BatchItem(key=str(i), payload=i)) for i in range(100)]
        assert [f.result(timeout=5).value for f in futures] == [i * 2 for i in range(100)]
    finally:
        b.stop()


def test_token_budget_caps_a_batch_of_long_inputs() -> None:
    clock = Clock()
    b, _, _ = make(clock, max_batch_size=32, max_batch_tokens=256, length_buckets=[64, 128])
    for i in range(10):
        b.submit(BatchItem(key=str(i), payload=i, length=100))  # 100-token inputs: 2 fit in 256
    first = b.take_batch(timeout=0)  # full by tokens: leaves at once, without waiting
    assert first is not None and len(first) == 2
    for i in range(4):
        b.submit(BatchItem(key=f"s{i}", payload=i, length=10))
    clock.advance(0.02)
    short = [b.take_batch(timeout=0) for _ in range(6)]
    sizes = sorted(len(x) for x in short if x)
    assert sizes == [2, 2, 2, 2, 4]  # the short ones go together; the long ones two by two


def test_one_input_over_the_budget_still_runs_alone() -> None:
    clock = Clock()
    b, _, _ = make(clock, max_batch_size=8, max_batch_tokens=64)
    b.submit(BatchItem(key="huge", payload=1, length=500))
    batch = b.take_batch(timeout=0)
    assert batch is not None and [i.key for i in batch] == ["huge"]
