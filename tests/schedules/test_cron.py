"""Cron expressions and time zones."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from app.errors import InvalidInput
from app.schedules.cron import check_cron, check_timezone, next_run


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("61 * * * *", "is not a valid cron expression"),
        ("* * * *", "must have five fields"),
        ("*/5 * * * * *", "must have five fields"),
        ("hello", "must have five fields"),
        ("0 0 31 2 *", "never fires"),
    ],
)
def test_bad_cron_is_refused_with_a_message(expr: str, message: str) -> None:
    with pytest.raises(InvalidInput) as err:
        check_cron(expr)
    assert err.value.message.startswith("cron: ")
    assert message in err.value.message


def test_cron_is_normalised_and_macros_are_accepted() -> None:
    assert check_cron("  */5   *  * * * ") == "*/5 * * * *"
    assert check_cron("@daily") == "@daily"


def test_unknown_timezone_is_refused() -> None:
    with pytest.raises(InvalidInput, match="unknown time zone 'Mars/Olympus'"):
        check_timezone("Mars/Olympus")
    assert str(check_timezone("Europe/Berlin")) == "Europe/Berlin"


def test_next_run_reads_the_cron_in_its_timezone() -> None:
    after = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
    # 02:00 in Berlin (winter, UTC+1) is 01:00 UTC the next day
    assert next_run("0 2 * * *", "Europe/Berlin", after) == datetime(2026, 1, 16, 1, tzinfo=UTC)
    assert next_run("0 2 * * *", "UTC", after) == datetime(2026, 1, 16, 2, tzinfo=UTC)


def test_next_run_across_daylight_saving_changes() -> None:
    # summer time: 02:00 in Berlin is 00:00 UTC
    after = datetime(2026, 7, 1, 12, 0, tzinfo=UTC)
    assert next_run("0 2 * * *", "Europe/Berlin", after) == datetime(2026, 7, 2, 0, tzinfo=UTC)
    # every hour across the autumn change: one firing per real hour, none lost or doubled
    t = datetime(2026, 10, 25, 0, 10, tzinfo=UTC)
    seen = []
    for _ in range(4):
        t = next_run("0 * * * *", "Europe/Berlin", t)
        seen.append(t.hour)
    assert seen == [1, 2, 3, 4]


def test_every_minute_fires_at_the_next_minute() -> None:
    after = datetime(2026, 5, 1, 8, 30, 12, tzinfo=UTC)
    assert next_run("* * * * *", "UTC", after) == datetime(2026, 5, 1, 8, 31, tzinfo=UTC)
