"""Cached augmented views: each view encoded once, reproducible whatever the worker count, and drawn
per sample and epoch during training instead of re-encoding augmented pixels every step."""

from __future__ import annotations

import torch

from conceptclip.data import FeatureCache, from_folder, holdout_split
from conceptclip.data.images import load_image, view_augment
from conceptclip.engine import run_experiment
from conceptclip.engine.data import build_parts


def test_views_are_cached_reproducible_and_worker_independent(image_folder, tiny_clip, tmp_path):
    ds = from_folder(image_folder)
    cache = FeatureCache(tmp_path / "cache")
    out = cache.image_features(tiny_clip, ds, views=3, view_seed=5)
    n, d = len(ds.samples), out["global"].shape[1]
    assert out["views"].shape == (n, 3, d)
    assert cache.misses == 4  # plain + 3 views, each encoded once
    # view v of sample i is the backbone's feature of that sample's augmented image
    s = ds.samples[7]
    expected = tiny_clip.encode_image(tiny_clip.preprocess([view_augment(5, 1)(load_image(s.path), s.id)])).global_
    assert torch.allclose(out["views"][7, 1], expected[0], atol=1e-5)
    assert not torch.allclose(out["views"][:, 0], out["global"], atol=1e-3)  # views differ from the plain image
    assert not torch.allclose(out["views"][:, 0], out["views"][:, 1], atol=1e-3)
    again = cache.image_features(tiny_clip, ds, views=3, view_seed=5)
    assert cache.hits == 4 and torch.equal(again["views"], out["views"])
    # two loader processes give the same features as one (per-sample seeded augmentation)
    workers = FeatureCache(tmp_path / "other").image_features(tiny_clip, ds, views=2, view_seed=5, num_workers=2)
    assert torch.equal(workers["global"], out["global"]) and torch.equal(workers["views"], out["views"][:, :2])


def test_training_batches_draw_one_view_per_sample_and_epoch(image_folder, tiny_clip, tmp_path):
    ds = from_folder(image_folder)
    pools = holdout_split(ds)
    parts = build_parts(ds, pools.parts, frozenset({"features"}), tiny_clip, FeatureCache(tmp_path / "c"), views=2)
    train, val = parts["train"], parts["val"]
    assert "views" in train.tensors and "views" not in val.tensors and "views" not in train.all()
    views = train.tensors["views"]

    def epoch(seed: int) -> list[dict]:
        return list(train.batches(4, shuffle=True, generator=torch.Generator().manual_seed(seed)))

    first = epoch(0)
    for batch in first:
        assert "views" not in batch
        for row, i in enumerate(batch["index"]):  # every feature is one of the sample's own views
            assert any(torch.equal(batch["features"][row], views[i, v]) for v in range(2))
    picked = torch.cat([b["features"] for b in first])
    assert all(torch.equal(a["features"], b["features"]) for a, b in zip(first, epoch(0)))  # seeded
    assert not torch.equal(picked, torch.cat([b["features"] for b in epoch(1)]))
    plain = next(train.batches(len(train)))  # unshuffled (evaluation): the plain features
    assert torch.equal(plain["features"], train.tensors["features"])


def test_run_with_augmented_views_records_them(image_folder, tiny_clip, tmp_path):
    ds = from_folder(image_folder)
    split = holdout_split(ds)
    metrics = run_experiment("coop", ds, split, tiny_clip, tmp_path / "run", cache=FeatureCache(tmp_path / "c"),
                             method_config={"n_ctx": 2},
                             train_config={"epochs": 2, "augment_views": 2, "progress": False})
    assert metrics["test"]["accuracy"] is not None
    import json

    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["augment_views"] == 2
