"""Fixtures for RC-TPL tests: one torch thread (tiny models run fastest so on a busy machine)."""

from __future__ import annotations

import pytest

from torch_threads import single_thread

_one_thread = pytest.fixture(scope="package", autouse=True)(single_thread)
