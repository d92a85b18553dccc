"""Poison inputs: work that takes its worker down with it.

A worker that dies (a segfault in the runtime, the OOM killer, ``os._exit``) runs nothing more,
so what it held can only be judged by others: the sweeper, and the next worker that claims it.
An input counts as poison once the worker running it was lost ``INFERQ_MAX_ATTEMPTS`` times; it
then ends ``failed`` with ``worker_lost`` (a prediction in the sweeper, a job line in the worker
that claims its chunk next) and is never run again.

To keep the innocent from being blamed, work whose earlier run was lost runs *alone*: a
prediction as a batch of one, a job chunk line by line, and only one such piece at a time per
process (``ISOLATION``). Everything that shared a batch or a process with the poison the first
time is lost once with it, and is then run alone, where only the poison takes the worker down
again.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable
from typing import Any

import orjson

WORKER_LOST = "worker_lost"
"""The error code of an input that took its worker down ``INFERQ_MAX_ATTEMPTS`` times."""

ISOLATION = threading.Lock()
"""Held while one piece of suspect work (a re-claimed prediction, a chunk whose run was lost)
is claimed and run: a worker that dies then was taken down by that piece, or by fresh work,
never by another suspect."""

CRASH_ENV = "INFERQ_TEST_CRASH_ON"
"""Test only: when set, a worker about to run an input whose JSON contains this text dies at
once (``os._exit(1)``), as a worker meeting a poison input does. Unset (always, outside the
fault tests) it is never looked at past the environment lookup."""


SLOW_WRITE_ENV = "INFERQ_TEST_SLOW_WRITE_SECONDS"
"""Test only: when set, a worker waits this long before it writes a batch's results, holding
the batch's claims meanwhile, so a fault test can catch it holding claimed work. Read once."""

_SLOW_WRITE_S = float(os.environ.get(SLOW_WRITE_ENV) or 0.0)


LOST_MESSAGE = (
    "the worker running it was lost {times} times; the input is taken to crash the worker"
    " and is not run again"
)
"""The ``worker_lost`` error message (``{times}``: how often the worker was lost)."""


def lost_message(times: int) -> str:
    """The ``worker_lost`` error message of an input whose worker was lost ``times`` times."""
    return LOST_MESSAGE.format(times=times)


def hold_before_write() -> None:
    """Test only: wait ``INFERQ_TEST_SLOW_WRITE_SECONDS`` (never, when unset)."""
    if _SLOW_WRITE_S:
        time.sleep(_SLOW_WRITE_S)


def crash_if_marked(inputs: Iterable[Any]) -> None:
    """Test only: die like a crashing worker if an input carries ``INFERQ_TEST_CRASH_ON``."""
    marker = os.environ.get(CRASH_ENV)
    if not marker:
        return
    for value in inputs:
        if marker in orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY).decode():
            os._exit(1)
