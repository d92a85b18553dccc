"""Claims of concurrent messages in one statement (``ClaimGroup``), with a claim that counts."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from app.db.predictions import Claimed
from app.predictions.executor import ClaimGroup


def row(pid: str) -> Claimed:
    return Claimed(pid, "m", "1", {}, 1, None)


class SlowClaim:
    """Claims every id asked for (but ``taken`` ones), plus ``extra``; takes ``seconds``."""

    def __init__(self, seconds: float = 0.05, extra: tuple[str, ...] = ()) -> None:
        self.seconds = seconds
        self.extra = list(extra)
        self.calls: list[list[str]] = []
        self.taken: set[str] = set()
        self.lock = threading.Lock()

    def __call__(self, ids: list[str]) -> list[Claimed]:
        with self.lock:
            self.calls.append(list(ids))
        time.sleep(self.seconds)
        got = [i for i in ids if i not in self.taken] + self.extra
        self.extra = []
        self.taken.update(got)
        return [row(i) for i in got]


def test_a_message_alone_is_claimed_at_once_and_gets_its_rows() -> None:
    claim = SlowClaim(0.0)
    group = ClaimGroup(claim)
    assert [r.id for r in group.claim(["a", "b"])] == ["a", "b"]
    assert [r.id for r in group.claim(["a", "c"])] == ["c"]  # a is running: not claimed again
    assert claim.calls == [["a", "b"], ["a", "c"]]


def test_concurrent_messages_share_claims_and_each_gets_its_own_ids() -> None:
    claim = SlowClaim(0.05, extra=("high-1",))
    group = ClaimGroup(claim)
    messages = [[f"m{i}-a", f"m{i}-b"] for i in range(24)]
    with ThreadPoolExecutor(24) as pool:
        results = list(pool.map(group.claim, messages))
    assert len(claim.calls) < len(messages) / 2, claim.calls  # far fewer statements
    assert sorted(i for call in claim.calls for i in call) == sorted(
        i for m in messages for i in m
    )  # every id asked for once
    for ids, rows in zip(messages, results, strict=True):
        own = [r.id for r in rows if r.id != "high-1"]
        assert own == ids
    assert sum(r.id == "high-1" for rows in results for r in rows) == 1  # pulled: one gets it


def test_a_failed_claim_fails_every_message_in_it_and_the_next_claims_go_on() -> None:
    calls = 0
    gate = threading.Event()

    def claim(ids: list[str]) -> list[Claimed]:
        nonlocal calls
        calls += 1
        if calls == 1:
            gate.wait(5)  # hold the first claim until the others queue behind it
            return [row(i) for i in ids]
        if calls == 2:
            raise ConnectionError("database away")
        return [row(i) for i in ids]

    group = ClaimGroup(claim)
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(group.claim, ["x"])
        time.sleep(0.05)
        queued = [pool.submit(group.claim, [f"q{i}"]) for i in range(3)]
        time.sleep(0.05)
        gate.set()
        assert [r.id for r in first.result(5)] == ["x"]
        for f in queued:  # claimed together in the second statement, which failed
            with pytest.raises(ConnectionError):
                f.result(5)
    assert [r.id for r in group.claim(["later"])] == ["later"]
    assert calls == 3
