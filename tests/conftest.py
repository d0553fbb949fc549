"""Fixtures shared by every test package: offline mode, a private cache, tiny models, PH2."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach the network from tests

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Every test session gets its own feature cache (never the user's)."""
    if "CONCEPTCLIP_CACHE" not in os.environ or os.environ.get("CONCEPTCLIP_TEST_KEEP_CACHE") != "1":
        os.environ["CONCEPTCLIP_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield


@pytest.fixture(scope="session")
def tiny_clip():
    """`create_backbone("tiny-clip")`: frozen, seed 0. Shared, so tests must not modify it."""
    from conceptclip.backbones import create_backbone

    return create_backbone("tiny-clip")


@pytest.fixture(scope="session")
def lite():
    """The real `lite` backbone with its fixed initial heads (loads offline from site-packages)."""
    from conceptclip.backbones.lite import LiteBackbone

    return LiteBackbone().freeze()


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


def _ph2_root() -> Path:
    from conceptclip.paths import shared_data_dir

    return shared_data_dir() / "ph2"


@pytest.fixture(scope="session")
def ph2():
    """The PH2 dataset from ../shared/data (skips with the reason when it is absent)."""
    root = _ph2_root()
    if not (root / "labels.csv").is_file():
        pytest.skip(f"PH2 not found at {root} (../shared/data is absent; set CONCEPTCLIP_DATA)")
    from conceptclip.data import load_dataset

    return load_dataset("ph2")


PETS = ["cat", "dog", "fish"]
PET_CONCEPTS = {"cat": ["whiskers", "pointed ears"], "dog": ["floppy ears", "wet nose"], "fish": ["fins", "scales"]}


def write_pet_images(root: Path, n: int, size: tuple[int, int]) -> Path:
    """root/<class>/<i>.png for cat, dog, fish: n seeded random (h, w) = `size` images per class, each
    class with its own mean colour (60, 130, 200), so even a tiny model can tell them apart."""
    rng = np.random.default_rng(1)
    for c, name in enumerate(PETS):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            arr = np.clip(rng.normal(60 + 70 * c, 20, (*size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / name / f"{i}.png")
    return root


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """A class-folder dataset: 3 classes x 10 random 40x40 PNGs, each class with its own mean colour."""
    return write_pet_images(tmp_path / "data", 10, (40, 40))


def _write_pets(root: Path) -> dict[str, Path]:
    from conceptclip.knowledge.schema import Provenance, save_bank, simple_bank

    data = write_pet_images(root / "data", 8, (40, 48))
    bank = simple_bank("pets", PET_CONCEPTS, Provenance(kind="paper", citation="hand-written test bank"))
    save_bank(bank, root / "bank.json")
    return {"data": data, "bank": root / "bank.json"}


@pytest.fixture(scope="session")
def pets():
    """Writes the pets data of the report and web tests: `pets(root)` gives {"data": root/data with
    8 random 40x48 PNGs per class (cat, dog, fish), "bank": root/bank.json, a hand-written concept
    bank with two concepts per class}."""
    return _write_pets
