import os
import sys
from pathlib import Path

import pytest

# the Flink tests reuse the streams tests' inputs (stream_cases) and Faust harness (worker_harness)
HERE = Path(__file__).parent
sys.path[:0] = [str(HERE), str(HERE.parent / "streams")]

from flink_harness import flink_ready  # noqa: E402


@pytest.fixture(autouse=True)
def _flink_environment():
    """Without `make flink-setup` these tests skip on a developer's machine and fail in CI
    (CI=true), where a skipped suite would hide a broken set-up."""
    reason = flink_ready()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
