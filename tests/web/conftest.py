"""Fixtures of the web tests: a real tiny CoOp run (tiny-clip, generated images) and a
hand-written concept bank for its classes."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach the network from tests

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CLASSES = ["cat", "dog", "fish"]
CONCEPTS = {"cat": ["whiskers", "pointed ears"], "dog": ["floppy ears", "wet nose"], "fish": ["fins", "scales"]}


def write_images(root: Path, n: int = 8) -> Path:
    """root/<class>/<i>.png: n 40x48 images per class, each class with its own mean colour."""
    rng = np.random.default_rng(1)
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            arr = np.clip(rng.normal(60 + 70 * c, 20, (40, 48, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / name / f"{i}.png")
    return root


def write_bank(path: Path) -> Path:
    from conceptclip.knowledge.schema import Provenance, save_bank, simple_bank

    bank = simple_bank("pets", CONCEPTS, Provenance(kind="paper", citation="hand-written test bank"))
    save_bank(bank, path)
    return path


@pytest.fixture(scope="session")
def web_run(tmp_path_factory, tiny_clip):
    """A CoOp run (2 context vectors, 2 epochs, K=2) on tiny-clip over generated images, the data
    folder and a concept bank for its classes."""
    from conceptclip.data import fewshot_split, from_folder, holdout_split
    from conceptclip.engine import run_experiment

    root = tmp_path_factory.mktemp("web_run")
    data = write_images(root / "data")
    ds = from_folder(data)
    run_experiment("coop", ds, fewshot_split(ds, holdout_split(ds), 2, 1), tiny_clip, root / "run",
                   method_config={"n_ctx": 2}, train_config={"epochs": 2, "progress": False})
    return {"root": root, "data": data, "run": root / "run", "bank": write_bank(root / "bank.json")}
