"""Fixtures for DEAL tests: short concept lists that fit tiny-clip's 32-token context, and DEAL on tiny-clip."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from deal_helpers import CONCEPTS


@pytest.fixture(scope="package", autouse=True)
def _one_thread():
    """Tiny models run fastest on one thread on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def concepts() -> dict[str, list[str]]:
    return {k: list(v) for k, v in CONCEPTS.items()}
