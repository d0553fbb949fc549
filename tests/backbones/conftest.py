"""Shared fixtures for backbone tests: a tiny in-memory CLIP and a few PIL images."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach the network from tests

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="session")
def tiny_clip():
    """`create_backbone("tiny-clip")`: frozen, seed 0. Shared, so tests must not modify it."""
    from conceptclip.backbones import create_backbone

    return create_backbone("tiny-clip")


@pytest.fixture
def pil_images() -> list[Image.Image]:
    """Four seeded images of different sizes and modes: RGB 64x40, RGBA 20x30, L 33x70, RGB 32x32."""
    rng = np.random.default_rng(0)
    return [
        Image.fromarray(rng.integers(0, 256, (40, 64, 3), dtype=np.uint8), mode="RGB"),
        Image.fromarray(rng.integers(0, 256, (30, 20, 4), dtype=np.uint8), mode="RGBA"),
        Image.fromarray(rng.integers(0, 256, (70, 33), dtype=np.uint8), mode="L"),
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), mode="RGB"),
    ]
