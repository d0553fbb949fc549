"""Fixtures for the XCoOp tests: tiny-clip with short clinical prompts, seeded feature/patch batches."""

from __future__ import annotations

import pytest
import torch

CLASSES = ["melanoma", "nevus"]
PROMPTS = {"melanoma": "a photo of melanoma, which has blue veil.", "nevus": "a photo of nevus, which has round shape."}


@pytest.fixture(scope="package", autouse=True)
def _one_thread():
    """Tiny models run fastest on one thread on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def make_xcoop(tiny_clip):
    from conceptclip.methods import create_method

    def make(**options):
        return create_method("xcoop", tiny_clip, CLASSES, {"concept_prompts": dict(PROMPTS), **options})

    return make


@pytest.fixture
def batch(tiny_clip) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    n, d = 8, tiny_clip.embed_dim
    return {"features": torch.randn(n, d, generator=gen), "patches": torch.randn(n, 16, d, generator=gen),
            "labels": torch.arange(n) % 2, "index": torch.arange(n)}
