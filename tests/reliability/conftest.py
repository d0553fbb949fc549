"""Fixtures of the reliability tests."""

from __future__ import annotations

import pytest

from _helpers import assert_one_line_error


@pytest.fixture
def one_line():
    return assert_one_line_error
