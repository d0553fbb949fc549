"""Datasets, manifests, split manifests and the feature cache."""

from __future__ import annotations

import json

import pytest
import torch

from conceptclip.data import (FeatureCache, Split, base2novel_split, fewshot_split, from_csv, from_folder, from_json,
                              holdout_split, load_image, write_split)
from conceptclip.errors import DataError


def test_folder_dataset(image_folder):
    ds = from_folder(image_folder)
    assert ds.classnames == ["cat", "dog", "fish"]
    assert len(ds) == 30 and sorted({s.label for s in ds.samples}) == [0, 1, 2]


def test_csv_manifest_single_and_multilabel(image_folder, tmp_path):
    csv_path = image_folder / "m.csv"
    csv_path.write_text("image,label,caption\ncat/0.png,cat,a cat\ndog/1.png,dog,\nfish/2.png,2,\n")
    ds = from_csv(csv_path, classnames=["cat", "dog", "fish"])
    assert [s.label for s in ds.samples] == [0, 1, 2] and ds.samples[0].caption == "a cat"
    ml = image_folder / "ml.csv"
    ml.write_text("image,label\ncat/0.png,cat;dog\ndog/1.png,fish\n")
    ds = from_csv(ml, multilabel=True, min_label_rows=1)
    assert ds.classnames == ["cat", "dog", "fish"] and ds.samples[0].labels == (0, 1) and ds.multilabel


def test_json_manifest(image_folder):
    doc = {"name": "pets", "classnames": ["cat", "dog"], "samples": [{"image": "cat/0.png", "label": "cat"},
                                                                      {"image": "dog/0.png", "label": 1}]}
    (image_folder / "m.json").write_text(json.dumps(doc))
    ds = from_json(image_folder / "m.json")
    assert ds.name == "pets" and [s.label for s in ds.samples] == [0, 1]


@pytest.mark.parametrize("row,needle", [
    ("cat/404.png,cat", "row 2: image file not found"),
    ("cat/0.png,zebra", "row 2: unknown label 'zebra'"),
    ("../../etc/passwd,cat", "escapes the dataset root"),
])
def test_manifest_errors_name_the_row(image_folder, row, needle):
    path = image_folder / "bad.csv"
    path.write_text(f"image,label\n{row}\n")
    with pytest.raises(DataError) as err:
        from_csv(path, classnames=["cat", "dog"])
    assert needle in str(err.value) and str(path) in str(err.value)
    assert "\n" not in str(err.value)


def test_corrupt_image_error_names_the_file(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    with pytest.raises(DataError, match="broken.jpg: cannot read image"):
        load_image(bad)
    with pytest.raises(DataError, match="not found"):
        load_image(tmp_path / "missing.png")


def test_splits_deterministic_disjoint_and_sized(image_folder, tmp_path):
    ds = from_folder(image_folder)
    pools = holdout_split(ds, train=0.5, val=0.2, seed=0)
    pools.check_disjoint()
    assert sorted(sum(pools.parts.values(), [])) == sorted(s.id for s in ds.samples)
    a, b = fewshot_split(ds, pools, 2, seed=1), fewshot_split(ds, pools, 2, seed=1)
    assert a.to_json() == b.to_json() and a.sha256() == b.sha256()
    a.check_disjoint()
    labels = [ds.by_id(i).label for i in a.parts["train"]]
    assert sorted(labels) == [0, 0, 1, 1, 2, 2]
    assert len(a.parts["val"]) == 6  # min(K, 4) = 2 per class
    assert a.parts["test"] == pools.parts["test"]  # test untouched
    c = fewshot_split(ds, pools, 2, seed=2)
    assert c.parts["test"] == a.parts["test"] and c.sha256() != a.sha256()
    path = write_split(a, tmp_path / "split.json")
    assert Split.load(path, ds).sha256() == a.sha256()
    with pytest.raises(DataError, match="different split manifest"):
        write_split(c, path)


def test_fewshot_too_many_shots(image_folder):
    ds = from_folder(image_folder)
    with pytest.raises(DataError, match="5 images in the train pool of 'data', fewer than the 6 needed for 6-shot"):
        fewshot_split(ds, holdout_split(ds), 6, 1)


def test_base2novel(image_folder):
    ds = from_folder(image_folder)
    s = base2novel_split(ds, holdout_split(ds), 1, 1)
    assert s.classes == {"base": ["cat", "dog"], "novel": ["fish"]}
    assert {ds.by_id(i).label for i in s.parts["train"]} == {0, 1}
    assert {ds.by_id(i).label for i in s.parts["test_novel"]} == {2}


def test_bad_split_file(tmp_path, image_folder):
    ds = from_folder(image_folder)
    (tmp_path / "s.json").write_text("{not json")
    with pytest.raises(DataError, match="s.json: not a valid split file"):
        Split.load(tmp_path / "s.json")
    doc = json.loads(holdout_split(ds).to_json())
    doc["parts"]["train"].append("ghost/9")
    (tmp_path / "t.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match="ghost/9"):
        Split.load(tmp_path / "t.json", ds)


def test_feature_cache_hits_and_recovers_from_corruption(image_folder, tiny_clip, tmp_path):
    ds = from_folder(image_folder)
    cache = FeatureCache(tmp_path / "cache")
    first = cache.image_features(tiny_clip, ds, patches=True)
    again = cache.image_features(tiny_clip, ds, patches=True)
    assert cache.misses == 1 and cache.hits == 1
    assert torch.equal(first["global"], again["global"]) and first["patches"].shape[:2] == (30, 16)
    files = list((tmp_path / "cache").glob("*.safetensors"))
    files[0].write_bytes(b"garbage")  # a corrupt entry is recomputed, never trusted
    third = cache.image_features(tiny_clip, ds, patches=True)
    assert torch.allclose(third["global"], first["global"]) and cache.misses == 2
    # a valid safetensors file of the wrong size (5 rows for 30 images) is recomputed too
    from conceptclip.io import load_tensors, save_tensors

    save_tensors(files[0], {k: v[:5] for k, v in third.items()})
    fourth = cache.image_features(tiny_clip, ds, patches=True)
    assert fourth["global"].shape[0] == 30 and torch.allclose(fourth["global"], first["global"]) and cache.misses == 3
    assert load_tensors(files[0])["global"].shape[0] == 30  # the entry is rewritten whole


@pytest.mark.shared_data
def test_ph2_loader(ph2):
    from conceptclip.data import load_dataset

    ph2 = load_dataset("ph2")  # a fresh copy: the session fixture is shared with other packages' tests
    assert len(ph2) == 200 and ph2.classnames == ["common nevus", "atypical nevus", "melanoma"]
    counts = [sum(s.label == c for s in ph2.samples) for c in range(3)]
    assert counts == [80, 80, 40]
    assert all(s.mask is not None and s.mask.is_file() for s in ph2.samples)
    mel = next(s for s in ph2.samples if s.label == 2 and s.attrs["blue_whitish_veil"] == "present")
    assert "melanoma" in mel.caption and "blue-whitish veil" in mel.caption
    pools = holdout_split(ph2)
    assert {k: len(v) for k, v in pools.parts.items()} == {"train": 100, "val": 40, "test": 60}
    fs = fewshot_split(ph2, pools, 16, 1)
    assert len(fs.parts["train"]) == 48 and len(fs.parts["val"]) == 12
