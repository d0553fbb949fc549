"""Fixtures of the report tests: a demo-like folder of real tiny runs (CoOp over two seeds and
zero-shot, tiny-clip, generated images) and a hand-written concept bank for its classes."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def demo_like(tmp_path_factory, tiny_clip, pets):
    """`runs/demo`-shaped folder: coop_seed1, coop_seed2 (2 context vectors, 2 epochs), zeroshot_seed1
    (K=2 shots), plus pools.json; with the data folder and a concept bank next to it."""
    from conceptclip.data import fewshot_split, from_folder, holdout_split, write_split
    from conceptclip.engine import run_experiment

    root = tmp_path_factory.mktemp("report_runs")
    written = pets(root)
    ds = from_folder(written["data"])
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
    return {"root": root, "data": written["data"], "runs": out, "bank": written["bank"]}
