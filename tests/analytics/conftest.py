"""Fixtures for the analytics tests."""

from __future__ import annotations

import pytest

from schemas.settings import Settings


@pytest.fixture
def analytics_settings(kafka_settings: Settings) -> Settings:
    """Catalogue topics on the real broker, chdb under the test's own data dir, quick flushes."""
    return kafka_settings.model_copy(update={"analytics": kafka_settings.analytics.model_copy(update={"flush_s": 0.2})})
