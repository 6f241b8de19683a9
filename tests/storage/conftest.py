"""Fixtures for the storage tests."""

from __future__ import annotations

import pytest
from storage_records import RecordFactory, make_record


@pytest.fixture
def record() -> RecordFactory:
    return make_record
