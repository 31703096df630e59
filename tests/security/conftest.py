from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.security.region import Region, start_region, stop_region


@pytest.fixture(scope="package")  # every user is in tests/security: stopped when the package is done
def region(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Region]:
    r = start_region(Path(tmp_path_factory.mktemp("tls")))
    try:
        yield r
    finally:
        stop_region(r)
