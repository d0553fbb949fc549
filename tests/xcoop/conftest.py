"""Fixtures for the XCoOp tests: tiny-clip with short clinical prompts, seeded feature/patch batches."""

from __future__ import annotations

import pytest
import torch

from torch_threads import single_thread

CLASSES = ["melanoma", "nevus"]
PROMPTS = {"melanoma": "a photo of melanoma, which has blue veil.", "nevus": "a photo of nevus, which has round shape."}


_one_thread = pytest.fixture(scope="package", autouse=True)(single_thread)


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
