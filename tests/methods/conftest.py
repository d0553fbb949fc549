"""Fixtures for method tests: the tiny in-memory CLIP, class names and seeded feature batches."""

from __future__ import annotations

import pytest
import torch

CLASSES = ["melanoma", "nevus", "keratosis"]


@pytest.fixture
def classes() -> list[str]:
    return list(CLASSES)


def feature_batch(backbone, n: int = 12, seed: int = 0, classes: int = 3) -> dict[str, torch.Tensor]:
    """`n` random image features of the backbone's width, labels cycling over the classes."""
    gen = torch.Generator().manual_seed(seed)
    return {"features": torch.randn(n, backbone.embed_dim, generator=gen), "labels": torch.arange(n) % classes,
            "index": torch.arange(n)}


@pytest.fixture
def batch(tiny_clip) -> dict[str, torch.Tensor]:
    return feature_batch(tiny_clip)


@pytest.fixture(scope="package", autouse=True)
def _one_thread():
    """Tiny models run fastest on one thread (and far faster than two on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
