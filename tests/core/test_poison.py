"""The test-only crash hook: honoured only when ``INFERQ_TEST_CRASH_ON`` is set."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

SCRIPT = "from app.poison import crash_if_marked; crash_if_marked([{'text': 'a'}, {'x': [1.5]}])"


@pytest.mark.parametrize(("marker", "code"), [(None, 0), ("", 0), ("zzz", 0), ("1.5", 1)])
def test_a_worker_dies_on_the_marker_only_when_it_is_set(marker: str | None, code: int) -> None:
    env = {k: v for k, v in os.environ.items() if k != "INFERQ_TEST_CRASH_ON"}
    if marker is not None:
        env["INFERQ_TEST_CRASH_ON"] = marker
    assert subprocess.run([sys.executable, "-c", SCRIPT], env=env).returncode == code
