"""Fixtures for DEAL tests: short concept lists that fit tiny-clip's 32-token context, and DEAL on tiny-clip."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from deal_helpers import CONCEPTS
from torch_threads import single_thread

_one_thread = pytest.fixture(scope="package", autouse=True)(single_thread)


@pytest.fixture
def concepts() -> dict[str, list[str]]:
    return {k: list(v) for k, v in CONCEPTS.items()}
