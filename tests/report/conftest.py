"""Fixtures of the report tests: a demo-like folder of real tiny runs (CoOp over two seeds and
zero-shot, tiny-clip, generated images) and a hand-written concept bank for its classes."""

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
def demo_like(tmp_path_factory, tiny_clip):
    """`runs/demo`-shaped folder: coop_seed1, coop_seed2 (2 context vectors, 2 epochs), zeroshot_seed1
    (K=2 shots), plus pools.json; with the data folder and a concept bank next to it."""
    from conceptclip.data import fewshot_split, from_folder, holdout_split, write_split
    from conceptclip.engine import run_experiment

    root = tmp_path_factory.mktemp("report_runs")
    data = write_images(root / "data")
    ds = from_folder(data)
    pools = holdout_split(ds)
    out = root / "demo"
    out.mkdir()
    write_split(pools, out / "pools.json")
    for seed in (1, 2):
        split = fewshot_split(ds, pools, 2, seed)
        run_experiment("coop", ds, split, tiny_clip, out / f"coop_seed{seed}", method_config={"n_ctx": 2},
                       train_config={"epochs": 2, "progress": False, "seed": seed})
        if seed == 1:
            run_experiment("zeroshot", ds, split, tiny_clip, out / "zeroshot_seed1", train_config={"seed": seed})
    return {"root": root, "data": data, "runs": out, "bank": write_bank(root / "bank.json")}
