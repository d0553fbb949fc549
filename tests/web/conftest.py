"""Fixtures of the web tests: a real tiny CoOp run (tiny-clip, generated images) and a
hand-written concept bank for its classes."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def web_run(tmp_path_factory, tiny_clip, pets):
    """A CoOp run (2 context vectors, 2 epochs, K=2) on tiny-clip over generated images, the data
    folder and a concept bank for its classes."""
    from conceptclip.data import fewshot_split, from_folder, holdout_split
    from conceptclip.engine import run_experiment

    root = tmp_path_factory.mktemp("web_run")
    written = pets(root)
    ds = from_folder(written["data"])
    run_experiment("coop", ds, fewshot_split(ds, holdout_split(ds), 2, 1), tiny_clip, root / "run",
                   method_config={"n_ctx": 2}, train_config={"epochs": 2, "progress": False})
    return {"root": root, "data": written["data"], "run": root / "run", "bank": written["bank"]}
