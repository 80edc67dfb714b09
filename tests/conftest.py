from __future__ import annotations

import pytest
import torch

import diffsampler as ds


def pytest_configure(config: pytest.Config) -> None:
    """One intra-op thread for the whole suite: its networks and tensors are tiny, where threads
    only add overhead, and the CI machine's two cores are better spent on subprocess tests."""
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _fresh_default_registry():
    """Each test starts from a freshly discovered process-wide registry."""
    ds.reset_registry()
    yield
    ds.reset_registry()
