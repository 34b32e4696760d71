from __future__ import annotations

from collections.abc import Iterator

import pytest
from netns_lab import Lab


@pytest.fixture
def lab(tmp_path) -> Iterator[Lab]:
    lab = Lab(tmp_path)
    try:
        lab.build()
        yield lab
    finally:
        lab.teardown()
