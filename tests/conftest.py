from __future__ import annotations

import pytest

import diffsampler as ds


@pytest.fixture(autouse=True)
def _fresh_default_registry():
    """Each test starts from a freshly discovered process-wide registry."""
    ds.reset_registry()
    yield
    ds.reset_registry()
