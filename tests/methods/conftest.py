"""Fixtures for method tests: the tiny in-memory CLIP, class names and seeded feature batches."""

from __future__ import annotations

import pytest
import torch

from torch_threads import single_thread

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


_one_thread = pytest.fixture(scope="package", autouse=True)(single_thread)
