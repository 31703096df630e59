"""Shared fixtures: real stores in temp dirs, a ledger harness, hypothesis profiles."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from ledger.lmdb_store import LmdbStore
from ledger.store import MemoryStore, Store

settings.register_profile(
    "default", deadline=None, max_examples=100, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "ci", deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
settings.load_profile("ci" if os.environ.get("CI") else "default")


@pytest.fixture(params=["memory", "lmdb"])
def any_store(request: pytest.FixtureRequest, tmp_path: object) -> Iterator[Store]:
    """One contract, two stores: every test using this runs against both."""
    if request.param == "memory":
        store: Store = MemoryStore()
    else:
        store = LmdbStore(str(tmp_path), map_size_bytes=64 << 20)  # type: ignore[arg-type]
    yield store
    store.close()
