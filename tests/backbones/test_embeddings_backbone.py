"""`embeddings:PATH`: stored embeddings joined by id, feature-only methods on them, one-line errors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conceptclip.backbones import create_backbone
from conceptclip.backbones.embeddings import write_manifest
from conceptclip.data.dataset import Dataset, Sample
from conceptclip.errors import BackboneError, ConceptClipError, ConfigError

CLASSES = ["cat", "dog", "fox"]
TEMPLATE = "a photo of a {}."
D = 8


def _unit(rng, n, d=D):
    x = rng.normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _ids_csv(path: Path, ids) -> Path:
    path.write_text("row,id\n" + "".join(f"{r},{i}\n" for r, i in enumerate(ids)), encoding="utf-8")
    return path


def _store(tmp_path: Path, n: int = 30, shards: int = 2, dtype=np.float16, seed: int = 0, shuffle: bool = True):
    """n samples (ids s000..), class = i % 3, class-shifted unit features, split over `shards` .npy
    files with their ids in shuffled order; text embeddings for the three template prompts."""
    rng = np.random.default_rng(seed)
    ids = [f"s{i:03d}" for i in range(n)]
    centers = _unit(rng, 3)
    feats = {i: centers[k % 3] + 0.6 * _unit(rng, 1)[0] for k, i in enumerate(ids)}
    order = list(rng.permutation(n)) if shuffle else list(range(n))
    images = []
    for s, chunk in enumerate(np.array_split(order, shards)):
        f = tmp_path / f"img{s}.npy"
        np.save(f, np.stack([feats[ids[j]] for j in chunk]).astype(dtype))
        images.append((f, _ids_csv(tmp_path / f"img{s}_ids.csv", [ids[j] for j in chunk])))
    text = centers + 0.3 * _unit(rng, 3)
    tf = tmp_path / "classes.npy"
    np.save(tf, text.astype(np.float32))
    manifest = write_manifest(tmp_path / "manifest.json", images,
                              [(tf, [TEMPLATE.format(c) for c in CLASSES])], embed_dim=D, logit_scale=50.0)
    dataset = Dataset("toy", list(CLASSES), [Sample(i, tmp_path / f"{i}.png", label=k % 3) for k, i in enumerate(ids)],
                      template=TEMPLATE)
    return manifest, dataset, {i: feats[i].astype(dtype).astype(np.float32) for i in ids}, text.astype(np.float32)


def test_joins_by_id_across_shards_not_position(tmp_path):
    manifest, ds, feats, _ = _store(tmp_path)
    bb = create_backbone(f"embeddings:{tmp_path}")
    assert bb.embed_dim == D and len(bb.store) == 30 and len(bb.store.shards) == 2
    ids = ["s007", "s000", "s029", "s013"]
    got = bb.stored_image_features(ids).numpy()
    assert np.array_equal(got, np.stack([feats[i] for i in ids]))  # float16 widened exactly
    assert float(bb.logit_scale) == pytest.approx(50.0)
    # the manifest file itself works as the spec, and the feature cache serves the join
    from conceptclip.data.feature_cache import FeatureCache

    out = FeatureCache(tmp_path / "cache").image_features(create_backbone(f"embeddings:{manifest}"), ds)
    assert np.array_equal(out["global"].numpy(), np.stack([feats[s.id] for s in ds.samples]))


def test_windowed_reads_and_blocks_match(tmp_path, monkeypatch):
    import conceptclip.backbones.embeddings as emb

    _, _, feats, _ = _store(tmp_path, n=50, shards=3, dtype=np.float32)
    bb = create_backbone(f"embeddings:{tmp_path}")
    monkeypatch.setattr(emb, "WINDOW_ROWS", 4)  # many tiny windows, dense and sparse paths
    rows = np.array([40, 3, 0, 49, 17, 17, 25])
    got = bb.store.read(rows)
    want = np.stack([feats[bb.store.ids[r]] for r in rows])
    assert np.array_equal(got, want)
    blocks = list(bb.store.blocks(block_rows=7))
    assert [s for s, _ in blocks][:3] == [0, 7, 14]
    assert np.array_equal(np.concatenate([b for _, b in blocks]), np.stack([feats[i] for i in bb.store.ids]))


def test_zeroshot_on_stored_prompts_is_scaled_cosine(tmp_path):
    from conceptclip.methods import create_method

    _, ds, feats, text = _store(tmp_path)
    bb = create_backbone(f"embeddings:{tmp_path}")
    m = create_method("zeroshot", bb, CLASSES, template=TEMPLATE)
    x = torch.from_numpy(np.stack([feats["s001"], feats["s005"]]))
    logits = m.logits({"features": x})
    for b in range(2):
        for k in range(3):
            xv, tv = x[b].double().numpy(), text[k].astype(np.float64)
            cos = float(xv @ tv) / (math.sqrt(float(xv @ xv)) * math.sqrt(float(tv @ tv)))
            assert float(logits[b, k]) == pytest.approx(50.0 * cos, rel=1e-5)


@pytest.mark.parametrize("method", ["zeroshot", "linear_probe", "lp_pp", "tip_adapter", "tip_adapter_f", "clip_adapter"])
def test_feature_only_methods_run_end_to_end(tmp_path, method):
    """Each feature-only method trains and tests from stored embeddings through the engine."""
    from conceptclip.data.splits import Split
    from conceptclip.engine import run_experiment

    _, ds, feats, _ = _store(tmp_path)
    bb = create_backbone(f"embeddings:{tmp_path}")
    ids = [s.id for s in ds.samples]
    split = Split(ds.name, ds.fingerprint(), "manual", {}, {"train": ids[:12], "val": ids[12:18], "test": ids[18:]})
    metrics = run_experiment(method, ds, split, bb, tmp_path / "run", train_config={"epochs": 3, "progress": False})
    assert metrics["test"]["n"] == 12 and 0.0 <= metrics["test"]["accuracy"] <= 1.0
    assert (tmp_path / "run" / "predictions.csv").is_file()


def test_prompt_learners_and_pixels_are_refused_in_one_line(tmp_path):
    from conceptclip.methods import create_method

    _store(tmp_path)
    bb = create_backbone(f"embeddings:{tmp_path}")
    with pytest.raises(ConfigError) as e:
        create_method("coop", bb, CLASSES, template=TEMPLATE)
    assert "no text tower" in str(e.value) and "'coop'" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError) as e:
        create_method("cocoop", bb, CLASSES, template=TEMPLATE)
    assert "'cocoop'" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(BackboneError, match="no image tower, so no patch tokens"):
        bb.encode_image(torch.zeros(1, 3, 4, 4), patches=True)
    with pytest.raises(BackboneError, match="no image tower"):
        bb.explain_layers()
    # a method reading patch tokens is refused before it is built
    from conceptclip.methods import get_method_class, available_methods

    patchy = [m for m in available_methods() if "patches" in get_method_class(m).inputs or "pixels" in get_method_class(m).inputs]
    assert patchy, "expected some method that reads patch tokens or pixels"
    with pytest.raises(ConfigError, match="lacks"):
        create_method(patchy[0], bb, CLASSES, template=TEMPLATE)
    # a prompt that is not stored names itself and what is stored
    with pytest.raises(BackboneError, match="'a photo of a wolf.'") as e:
        bb.encode_texts(["a photo of a wolf."])
    assert "stored prompts: a photo of a cat." in str(e.value)


def test_text_aliases_and_concept_scores_from_stored_concepts(tmp_path):
    from conceptclip.explain.similarity import concept_scores
    from conceptclip.prompts import encode_prompts

    rng = np.random.default_rng(3)
    x = _unit(rng, 5).astype(np.float32)
    f = tmp_path / "x.npy"
    np.save(f, x)
    ids = _ids_csv(tmp_path / "x_ids.csv", [f"i{k}" for k in range(5)])
    concepts = _unit(rng, 2).astype(np.float32)
    ref = _unit(rng, 1).astype(np.float32)
    np.save(tmp_path / "c.npy", concepts)
    np.save(tmp_path / "r.npy", ref)
    write_manifest(tmp_path / "manifest.json", [(f, ids)], [(tmp_path / "c.npy", ["blue veil", "streaks"]),
                                                            (tmp_path / "r.npy", ["a dermoscopy image"])],
                   embed_dim=D, text_aliases={"blue-whitish veil": "blue veil"})
    bb = create_backbone(f"embeddings:{tmp_path / 'manifest.json'}")
    c = encode_prompts(bb, ["blue-whitish veil", "streaks"])
    assert torch.allclose(c, torch.from_numpy(concepts), atol=1e-6)  # stored rows are unit already
    r = encode_prompts(bb, ["a dermoscopy image"])[0]
    img = bb.stored_image_features(["i0", "i3"])
    got = concept_scores(img, c, r, scale=float(bb.logit_scale))
    for b, i in enumerate([0, 3]):
        for k in range(2):
            s, rr = float(x[i] @ concepts[k]), float(x[i] @ ref[0])
            want = math.exp(100 * s) / (math.exp(100 * s) + math.exp(100 * rr))
            assert float(got[b, k]) == pytest.approx(want, rel=1e-4, abs=1e-6)


def test_plain_folder_prefers_the_pickle_free_array(tmp_path):
    rng = np.random.default_rng(0)
    x = _unit(rng, 4).astype(np.float16)
    np.save(tmp_path / "emb_Norm.npy", np.array({"a": x[0]}, dtype=object), allow_pickle=True)  # original pickle
    np.save(tmp_path / "emb_Norm_array.npy", x)
    _ids_csv(tmp_path / "emb_Norm_ids.csv", ["a", "b", "c", "d"])
    bb = create_backbone(f"embeddings:{tmp_path}")
    assert np.array_equal(bb.stored_image_features(["c"]).numpy()[0], x[2].astype(np.float32))


# -- one-line errors for every bad input -------------------------------------------------------------

def _one_line(exc: BaseException) -> str:
    msg = str(exc)
    assert isinstance(exc, ConceptClipError) and "\n" not in msg and "Traceback" not in msg
    return msg


def test_missing_ids_name_count_and_first_ids(tmp_path):
    from conceptclip.data.feature_cache import FeatureCache

    _, ds, _, _ = _store(tmp_path)
    extra = Dataset("toy", list(CLASSES), ds.samples + [Sample(f"new{k}", tmp_path / "x.png", label=0) for k in range(7)])
    bb = create_backbone(f"embeddings:{tmp_path}")
    with pytest.raises(BackboneError) as e:
        FeatureCache(tmp_path / "c").image_features(bb, extra)
    msg = _one_line(e.value)
    assert "7 of 37 ids of dataset 'toy' have no stored embedding" in msg
    assert "new0, new1, new2, new3, new4, ... (+2 more)" in msg and "img0_ids.csv" in msg


def test_duplicate_ids(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "a.npy", _unit(rng, 3).astype(np.float32))
    np.save(tmp_path / "b.npy", _unit(rng, 2).astype(np.float32))
    write_manifest(tmp_path / "manifest.json", [(tmp_path / "a.npy", _ids_csv(tmp_path / "a_ids.csv", ["x", "y", "z"])),
                                                (tmp_path / "b.npy", _ids_csv(tmp_path / "b_ids.csv", ["y", "w"]))],
                   embed_dim=D)
    bb = create_backbone(f"embeddings:{tmp_path}")
    with pytest.raises(BackboneError) as e:
        bb.stored_image_features(["x"])
    msg = _one_line(e.value)
    assert "b_ids.csv" in msg and "1 duplicate id(s): y" in msg


def test_wrong_dimensions(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "a.npy", _unit(rng, 3).astype(np.float32))
    np.save(tmp_path / "b.npy", _unit(rng, 2, d=D + 1).astype(np.float32))
    a_ids = _ids_csv(tmp_path / "a_ids.csv", ["x", "y", "z"])
    b_ids = _ids_csv(tmp_path / "b_ids.csv", ["v", "w"])
    write_manifest(tmp_path / "m1.json", [(tmp_path / "a.npy", a_ids), (tmp_path / "b.npy", b_ids)], embed_dim=D)
    with pytest.raises(BackboneError) as e:
        create_backbone(f"embeddings:{tmp_path / 'm1.json'}")
    assert "b.npy: 2 rows of dimension 9; expected dimension 8" in _one_line(e.value)
    # rows vs ids
    write_manifest(tmp_path / "m2.json", [(tmp_path / "a.npy", b_ids)], embed_dim=D)
    with pytest.raises(BackboneError) as e:
        create_backbone(f"embeddings:{tmp_path / 'm2.json'}")
    assert "a.npy: 3 rows but" in _one_line(e.value) and "lists 2 ids" in str(e.value)
    # text embeddings of another dimension
    np.save(tmp_path / "t.npy", _unit(rng, 1, d=D + 1).astype(np.float32))
    write_manifest(tmp_path / "m3.json", [(tmp_path / "a.npy", a_ids)], [(tmp_path / "t.npy", ["p"])], embed_dim=D)
    with pytest.raises(BackboneError) as e:
        create_backbone(f"embeddings:{tmp_path / 'm3.json'}")
    assert "t.npy: text embeddings of shape (1, 9); expected (1, 8)" in _one_line(e.value)
    # not 2-D
    np.save(tmp_path / "c.npy", np.zeros((3, 2, 4), np.float32))
    write_manifest(tmp_path / "m4.json", [(tmp_path / "c.npy", a_ids)], embed_dim=D)
    with pytest.raises(BackboneError, match=r"c.npy: shape \(3, 2, 4\); expected a 2-D array"):
        create_backbone(f"embeddings:{tmp_path / 'm4.json'}")


def test_non_finite_values(tmp_path):
    rng = np.random.default_rng(0)
    x = _unit(rng, 6).astype(np.float16)
    x[1, 3] = np.nan
    x[4, 0] = np.inf
    np.save(tmp_path / "e_array.npy", x)
    _ids_csv(tmp_path / "e_ids.csv", list("abcdef"))
    bb = create_backbone(f"embeddings:{tmp_path}")
    assert bb.stored_image_features(["a", "c"]).shape == (2, D)  # finite rows serve
    with pytest.raises(BackboneError) as e:
        bb.stored_image_features(list("abcdef"))
    msg = _one_line(e.value)
    assert "e_array.npy: 2 row(s) with non-finite values (NaN/inf), ids b, e" in msg


def test_pickled_npy_is_refused_never_loaded(tmp_path):
    np.save(tmp_path / "emb.npy", np.array({"a": np.zeros(D, np.float16)}, dtype=object), allow_pickle=True)
    _ids_csv(tmp_path / "emb_ids.csv", ["a"])
    with pytest.raises(BackboneError) as e:
        create_backbone(f"embeddings:{tmp_path}")
    msg = _one_line(e.value)
    assert "emb.npy: a pickled .npy" in msg and "never loaded" in msg
    # a pickled text file too
    rng = np.random.default_rng(0)
    np.save(tmp_path / "ok.npy", _unit(rng, 1).astype(np.float32))
    write_manifest(tmp_path / "m.json", [(tmp_path / "ok.npy", tmp_path / "emb_ids.csv")],
                   [(tmp_path / "emb.npy", ["p"])], embed_dim=D)
    with pytest.raises(BackboneError, match="emb.npy: a pickled .npy"):
        create_backbone(f"embeddings:{tmp_path / 'm.json'}")


def test_bad_specs_and_manifests(tmp_path):
    with pytest.raises(BackboneError, match="needs a path"):
        create_backbone("embeddings")
    with pytest.raises(BackboneError, match="not found"):
        create_backbone(f"embeddings:{tmp_path / 'nope'}")
    (tmp_path / "bad.json").write_text('{"format": "other"}')
    with pytest.raises(BackboneError, match="'format' is 'other'; expected 'conceptclip-embeddings'"):
        create_backbone(f"embeddings:{tmp_path / 'bad.json'}")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(BackboneError, match="not valid JSON"):
        create_backbone(f"embeddings:{tmp_path / 'broken.json'}")


def test_safetensors_shard(tmp_path):
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    x = _unit(rng, 4).astype(np.float16)
    save_file({"embeddings": x}, str(tmp_path / "s.safetensors"))
    write_manifest(tmp_path / "manifest.json", [(tmp_path / "s.safetensors", _ids_csv(tmp_path / "s_ids.csv", list("pqrs")))],
                   embed_dim=D)
    bb = create_backbone(f"embeddings:{tmp_path}")
    assert np.array_equal(bb.stored_image_features(["s", "p"]).numpy(), x[[3, 0]].astype(np.float32))


def test_cli_prints_one_line_error(tmp_path):
    import subprocess
    import sys

    np.save(tmp_path / "emb.npy", np.array({"a": 1}, dtype=object), allow_pickle=True)
    _ids_csv(tmp_path / "emb_ids.csv", ["a"])
    r = subprocess.run([sys.executable, "-c", "from conceptclip.cli import main; main()", "train", "-m", "linear_probe",
                        "--backbone", f"embeddings:{tmp_path}", "-o", str(tmp_path / "run")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert lines[-1].startswith("error:") and "pickled .npy" in r.stderr and "Traceback" not in r.stderr
