"""Fixtures of the SDK tests: in-process fake ledgers (tests/sdk/fakes.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.sdk.fakes import FakeLedger


@pytest.fixture
def fake() -> Iterator[FakeLedger]:
    f = FakeLedger().start()
    yield f
    f.stop()


@pytest.fixture
def fake2() -> Iterator[FakeLedger]:
    """A second fake (another node of the region)."""
    f = FakeLedger().start()
    yield f
    f.stop()
