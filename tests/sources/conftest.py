"""Fixtures of the source tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

DATA = Path(os.environ.get("EIGENLOOP_SHARED_DATA", Path(__file__).resolve().parents[2].parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_root() -> Path:
    if not (DATA / "exchange_binance").is_dir():
        pytest.skip(f"recorded data not found at {DATA}")
    return DATA
