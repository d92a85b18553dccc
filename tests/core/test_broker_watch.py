"""``app.requeue.BrokerWatch``: a lost marker means one recovery, at once, and only one."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from app.requeue import BrokerWatch

T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


class Marker:
    """The broker's side, in memory: ``present`` None while the broker does not answer."""

    def __init__(self) -> None:
        self.present: bool | None = True
        self.puts = 0

    def epoch_present(self) -> bool | None:
        return self.present

    def put_epoch(self) -> None:
        self.puts += 1
        self.present = True


def test_a_present_marker_recovers_nothing_and_an_absent_one_recovers_once() -> None:
    marker, calls = Marker(), []
    watch = BrokerWatch(
        marker, lambda before: calls.append(before) or 7, known=lambda: True, remember=lambda: None
    )
    clock = iter(T0 + timedelta(seconds=i) for i in range(100))
    assert watch.check(lambda: next(clock)) == 0 and calls == []
    marker.present = None  # the broker is down: nothing to decide
    assert watch.check(lambda: next(clock)) is None
    marker.present = False  # back, empty
    assert watch.check(lambda: next(clock)) == 7
    assert calls == [T0 + timedelta(seconds=0)] and marker.puts == 1 and watch.losses == 1
    assert watch.check(lambda: next(clock)) == 0  # the marker is back: no second recovery
    assert len(calls) == 1


def test_a_failed_recovery_is_tried_again_with_the_first_loss_time() -> None:
    marker, calls = Marker(), []
    marker.present = False

    def recover(before: datetime) -> int:
        calls.append(before)
        if len(calls) == 1:
            raise ConnectionError("postgres away")
        return 3

    watch = BrokerWatch(marker, recover, known=lambda: True, remember=lambda: None)
    with pytest.raises(ConnectionError):
        watch.check(lambda: T0)
    assert marker.puts == 1 and watch.pending == T0  # put back first: others stop detecting
    assert watch.check(lambda: T0 + timedelta(seconds=5)) == 3
    assert calls == [T0, T0] and watch.pending is None and watch.losses == 1


def test_a_broker_that_never_had_the_marker_is_new_and_nothing_is_published_again() -> None:
    marker, calls, remembered = Marker(), [], []
    marker.present = False
    watch = BrokerWatch(
        marker,
        lambda before: calls.append(before) or 1,
        known=lambda: bool(remembered),
        remember=lambda: remembered.append(True),
    )
    assert watch.check(lambda: T0) == 0
    assert calls == [] and marker.puts == 1 and remembered == [True] and watch.losses == 0
    marker.present = False  # now it had one: a loss
    assert watch.check(lambda: T0) == 1 and watch.losses == 1
