"""One shared fixture body: tiny models run fastest on one torch thread (far faster than two on a
busy 2-core machine). A test package opts in with
`_one_thread = pytest.fixture(scope="package", autouse=True)(single_thread)`."""

from __future__ import annotations

from typing import Iterator

import torch


def single_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
