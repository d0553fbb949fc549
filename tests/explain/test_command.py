"""`explain_images` / `conceptclip explain` on a real (tiny) results folder, and the overlay drawing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conceptclip.errors import CheckpointError, ConfigError


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A CoOp run on tiny-clip over 3 classes x 10 random images (2 epochs)."""
    from conceptclip.backbones import create_backbone
    from conceptclip.data import fewshot_split, from_folder, holdout_split
    from conceptclip.engine import run_experiment

    root = tmp_path_factory.mktemp("explain_run")
    rng = np.random.default_rng(1)
    for c, name in enumerate(["cat", "dog", "fish"]):
        (root / "data" / name).mkdir(parents=True)
        for i in range(10):
            arr = np.clip(rng.normal(60 + 70 * c, 20, (40, 48, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / "data" / name / f"{i}.png")
    ds = from_folder(root / "data")
    split = fewshot_split(ds, holdout_split(ds), 2, 1)
    run_experiment("coop", ds, split, create_backbone("tiny-clip"), root / "run", method_config={"n_ctx": 2},
                   train_config={"epochs": 2, "progress": False})
    return root / "run"


@pytest.fixture
def images(run_dir):
    data = run_dir.parent / "data"
    return [data / "cat" / "0.png", data / "fish" / "3.png", data / "dog" / "7.png"]


def test_explain_images_writes_overlays_maps_and_scores(run_dir, images, tmp_path):
    from conceptclip.engine.load import load_run
    from conceptclip.explain import explain_method, method_similarity_maps
    from conceptclip.report.explain_files import explain_images
    from conceptclip.io import load_tensors

    out = tmp_path / "explained"
    doc = explain_images(run_dir, images, out, sanity=False)
    assert doc["explainers"] == ["gradcam", "similarity", "chefer"]
    assert doc["sanity"] == {}
    assert doc["classnames"] == ["cat", "dog", "fish"]
    method, _ = load_run(run_dir)
    pixels = method.backbone.preprocess([Image.open(p).convert("RGB") for p in images])
    with torch.no_grad():
        probs = method.probabilities(method.logits({"features": method.backbone.encode_image(pixels).global_}))
    on_disk = json.loads((out / "scores.json").read_text())
    assert on_disk == doc
    raw = load_tensors(out / "maps.safetensors")
    gradcam = explain_method(method, pixels).maps
    chefer = explain_method(method, pixels, explainer="chefer").maps
    sim = method_similarity_maps(method, pixels)
    for i, rec in enumerate(doc["images"]):
        assert rec["image"] == str(images[i])
        got = torch.tensor([rec["probabilities"][c] for c in doc["classnames"]])
        assert torch.allclose(got, probs[i], atol=1e-5)
        assert rec["prediction"] == doc["classnames"][int(probs[i].argmax())]
        for name, ref in (("gradcam", gradcam), ("chefer", chefer), ("similarity", sim)):
            assert torch.allclose(raw[f"{rec['key']}/{name}"], ref[i], atol=1e-5)
            png = Image.open(out / rec["overlays"][name])
            assert png.size == (4 * (32 + 4) + 4, 32 + 14 + 8)  # image + 3 class overlays
    assert doc["images"][1]["key"] == "001_3"


def test_explain_runs_the_sanity_checks_and_flags_failed_maps(run_dir, images, tmp_path):
    """Learned-parameter randomisation on every map type; a failed check puts a red banner above
    the overlays (a taller PNG) and its verdict into scores.json."""
    from conceptclip.report.explain_files import explain_images

    doc = explain_images(run_dir, images, tmp_path / "checked", explainers=["gradcam", "similarity"])
    assert set(doc["sanity"]) == {"gradcam", "similarity"}
    for name, checks in doc["sanity"].items():
        (check,) = checks  # no label-shuffled twin in this run: only the parameter test
        assert check["test"] == "parameter_randomisation" and check["images"] == len(images)
        assert -1.0 <= check["spearman"] <= 1.0 and check["message"]
        png = Image.open(tmp_path / "checked" / doc["images"][0]["overlays"][name])
        plain = 32 + 14 + 8
        assert (png.size[1] > plain) == (check["applicable"] and not check["passed"])


def test_predicted_class_and_concept_scores(run_dir, images, tmp_path):
    from conceptclip.engine.load import load_run
    from conceptclip.explain import concept_scores
    from conceptclip.prompts import encode_prompts
    from conceptclip.report.explain_files import explain_images

    concepts = ["a photo of a dark cat.", "a photo of white fish."]
    doc = explain_images(run_dir, images[:2], tmp_path / "o", explainers=["gradcam"], targets="predicted", sanity=False,
                         concepts=concepts, reference="a photo.")
    assert doc["concept_score"] == "monet"
    method, _ = load_run(run_dir)
    bb = method.backbone
    feats = bb.encode_image(bb.preprocess([Image.open(p).convert("RGB") for p in images[:2]]))
    expected = concept_scores(feats, encode_prompts(bb, concepts), encode_prompts(bb, ["a photo."])[0],
                              scale=float(bb.logit_scale))
    for i, rec in enumerate(doc["images"]):
        assert list(rec["overlays"]) == ["gradcam", "concepts"]
        assert list(rec["target_scores"]["gradcam"]) == [rec["prediction"]]
        got = torch.tensor([rec["concept_scores"][c] for c in concepts])
        assert torch.allclose(got, expected[i].detach(), atol=1e-5)
        assert Image.open(tmp_path / "o" / rec["overlays"]["gradcam"]).size == (2 * 36 + 4, 54)


def test_one_pipeline_under_the_command_and_the_cards(run_dir, images):
    """`engine.explain.RunExplanations` gives both faces their maps: the predicted-class maps (the
    report cards, `--predicted-only`) are the all-class maps at the predicted class, and every card's
    heat map is the overlay of the pipeline's map."""
    from conceptclip.data.images import load_image
    from conceptclip.engine.explain import RunExplanations
    from conceptclip.explain.maps import center_crop_geometry
    from conceptclip.report.explainer import RunExplainer
    from conceptclip.report.overlay import overlay

    pics = [load_image(p) for p in images]
    every = RunExplanations(run_dir, sanity=False).explain_batch(pics)
    pipe = RunExplanations(run_dir, targets="predicted", sanity=False)
    pred = pipe.explain_batch(pics)
    assert torch.equal(every.probabilities, pred.probabilities) and torch.equal(every.predicted, pred.predicted)
    rows = torch.arange(len(pics))
    assert list(pred.maps) == ["gradcam", "chefer", "similarity"]
    for name, maps in pred.maps.items():
        assert maps.shape[1] == 1
        torch.testing.assert_close(maps[:, 0], every.maps[name][rows, every.predicted], atol=1e-6, rtol=1e-5)
    for name, scores in pred.target_scores.items():
        torch.testing.assert_close(scores[:, 0], every.target_scores[name][rows, every.predicted])
    cards = RunExplainer(run_dir, load_bank=False, sanity=False).explain_batch(pics)
    for i, card in enumerate(cards):
        assert card.prediction == pipe.classnames[int(pred.predicted[i])]
        shown = center_crop_geometry(pics[i], pipe.backbone.image_size)
        for heat in card.maps:
            expected = np.asarray(overlay(shown, pred.maps[heat.name][i, 0]))
            assert np.array_equal(np.asarray(heat.image), expected)


def test_cli_and_errors(run_dir, images, tmp_path):
    from typer.testing import CliRunner

    from conceptclip.cli.explain import explain_app
    from conceptclip.report.explain_files import explain_images

    res = CliRunner().invoke(explain_app, [str(run_dir), str(images[0]), "--out", str(tmp_path / "c"),
                                           "-e", "gradcam", "--predicted-only"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output.strip().splitlines()[-1])
    assert summary["images"] == 1 and summary["explainers"] == ["gradcam"]
    assert (tmp_path / "c" / "000_0_gradcam.png").is_file()
    with pytest.raises(ConfigError, match="explainer 'lime'"):
        explain_images(run_dir, images, tmp_path / "x", explainers=["lime"])
    with pytest.raises(ConfigError, match="at least one image"):
        explain_images(run_dir, [], tmp_path / "x")
    with pytest.raises(CheckpointError, match="config.json missing"):
        explain_images(tmp_path, images, tmp_path / "x")


# -- the method's own explanation --------------------------------------------------------------


DEAL_CONCEPTS = {"cat": ["small", "dark"], "dog": ["large"], "fish": ["round", "smooth", "bright"]}


@pytest.fixture(scope="module")
def deal_run(run_dir):
    """A DEAL run on tiny-clip over the CoOp run's images (1 epoch, short concept lists)."""
    from conceptclip.backbones import create_backbone
    from conceptclip.data import fewshot_split, from_folder, holdout_split
    from conceptclip.engine import run_experiment

    ds = from_folder(run_dir.parent / "data")
    split = fewshot_split(ds, holdout_split(ds), 2, 1)
    run_experiment("deal", ds, split, create_backbone("tiny-clip"), run_dir.parent / "deal",
                   method_config={"concepts": DEAL_CONCEPTS},
                   train_config={"epochs": 1, "batch_size": 4, "progress": False})
    return run_dir.parent / "deal"


def test_deal_explanation_ranks_concepts_and_draws_their_maps(deal_run, images, tmp_path):
    from conceptclip.engine.load import load_run
    from conceptclip.report.explain_files import explain_images
    from conceptclip.io import load_tensors

    out = tmp_path / "deal"
    doc = explain_images(deal_run, images, out, explainers=["gradcam"], targets="predicted")
    assert json.loads((out / "scores.json").read_text()) == doc
    method, _ = load_run(deal_run)
    pixels = method.backbone.preprocess([Image.open(p).convert("RGB") for p in images])
    with torch.no_grad():
        batch = {"features": method.backbone.encode_image(pixels).global_}
        averaged = method.concept_averaged_logits(batch)
        pred = method.logits(batch).argmax(1)
    raw = load_tensors(out / "maps.safetensors")
    reference = method.heat_maps(pixels, pred)
    for i, rec in enumerate(doc["images"]):
        own = rec["method_explanation"]
        c = int(pred[i])
        assert own["predicted"] == c and rec["prediction"] == doc["classnames"][c]
        names = DEAL_CONCEPTS[doc["classnames"][c]]
        ranked = own["concepts"]
        # every concept of the predicted class, best contribution first, summing to its averaged logit
        assert sorted(n for n, _ in ranked) == sorted(names)
        values = [v for _, v in ranked]
        assert values == sorted(values, reverse=True)
        assert sum(values) == pytest.approx(float(averaged[i, c]), abs=1e-4)
        assert own["rationale"].startswith(f"{doc['classnames'][c]}, with {ranked[0][0]}")
        assert own["concept_mask"] == [k < len(names) for k in range(3)]
        assert "concept_maps" not in own and "category_map" not in own
        assert torch.allclose(raw[f"{rec['key']}/concept_maps"], reference.concepts[i], atol=1e-5)
        assert torch.allclose(raw[f"{rec['key']}/category_map"], reference.category[i], atol=1e-5)
        png = Image.open(out / rec["overlays"]["method_concepts"])
        assert rec["overlays"]["method_concepts"] == f"{rec['key']}_method_concepts.png"
        # the image and one overlay per concept of the predicted class, 2 x 2.75 inches each at 100 dpi
        assert png.size == ((1 + len(names)) * 200, 275)


def test_no_method_explanation_without_explain_or_when_asked(run_dir, deal_run, images, tmp_path):
    from typer.testing import CliRunner

    from conceptclip.cli.explain import explain_app
    from conceptclip.report.explain_files import explain_images

    doc = explain_images(run_dir, images[:1], tmp_path / "coop", explainers=["gradcam"])  # CoOp: no `explain`
    assert "method_explanation" not in doc["images"][0]
    assert list(doc["images"][0]["overlays"]) == ["gradcam"]
    res = CliRunner().invoke(explain_app, [str(deal_run), str(images[0]), "-o", str(tmp_path / "off"), "-e", "gradcam",
                                           "--predicted-only", "--no-method-explanation"])
    assert res.exit_code == 0, res.output
    rec = json.loads((tmp_path / "off" / "scores.json").read_text())["images"][0]
    assert "method_explanation" not in rec and not list((tmp_path / "off").glob("*_method_concepts.png"))


def test_split_method_explanation_keeps_names_and_moves_maps():
    from conceptclip.engine.explain import split_method_explanation

    doc = {"predicted": torch.tensor([2, 0]), "rationale": ["a", "b"], "concepts": [[("x", 0.5)], [("y", 0.25)]],
           "concept_maps": torch.ones(2, 3, 4, 4), "rationale_map": torch.zeros(2, 4, 4),
           "nearest": {"cat": ["x"]}, "scale": torch.tensor(1.5)}
    (r0, m0), (r1, m1) = split_method_explanation(doc, 2)
    assert r0 == {"predicted": 2, "rationale": "a", "concepts": [["x", 0.5]], "nearest": {"cat": ["x"]}, "scale": 1.5}
    assert r1["predicted"] == 0 and r1["concepts"] == [["y", 0.25]]
    assert set(m0) == {"concept_maps", "rationale_map"} and m1["concept_maps"].shape == (3, 4, 4)


# -- overlay drawing -------------------------------------------------------------------------


def test_overlay_blends_a_colormap_over_the_image():
    from conceptclip.report.overlay import colorize, normalize01, overlay, overlay_panel

    image = Image.new("RGB", (8, 4), (200, 100, 50))
    ramp = torch.tensor([[0.0, 1.0], [2.0, 4.0]])
    assert np.allclose(normalize01(ramp), [[0, 0.25], [0.5, 1.0]])
    colour = colorize(ramp)
    # jet(0) = (0, 0, 0.5) and jet(1) = (0.5, 0, 0): the minimum is dark blue, the maximum dark red
    assert colour.getpixel((0, 0)) == (0, 0, 128) and colour.getpixel((1, 1)) == (128, 0, 0)
    assert overlay(image, ramp, alpha=0.0).tobytes() == image.tobytes()
    assert overlay(image, ramp, alpha=1.0).tobytes() == colorize(ramp, (8, 4)).tobytes()
    half = overlay(Image.new("RGB", (2, 2), (200, 100, 50)), torch.zeros(2, 2), alpha=0.5)
    assert half.getpixel((0, 0)) == (100, 50, 89)  # constant map -> jet(0): (200+0)/2, (100+0)/2, (50+128)/2
    assert overlay_panel(image, torch.rand(2, 2, 2), ["a", "b"]).size == (3 * 12 + 4, 4 + 14 + 8)
    with pytest.raises(ConfigError, match="alpha"):
        overlay(image, ramp, alpha=2.0)
    with pytest.raises(ConfigError, match="NaN"):
        colorize(torch.tensor([[float("nan"), 0.0]]))


def test_label_shuffled_twin_adds_the_data_randomisation_check(run_dir, images, tmp_path):
    """`conceptclip sanity RUN`'s engine: the twin is trained on the run's split with permuted
    train/val labels (class counts kept, test labels untouched); explain then runs both tests."""
    import shutil

    from conceptclip.data import Split, from_folder
    from conceptclip.engine.sanity import TWIN_DIR, label_shuffled, train_label_shuffled_twin
    from conceptclip.report.explain_files import explain_images

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    ds = from_folder(run_dir.parent / "data")
    split = Split.load(run / "split.json", ds)
    fitted = list(split.parts["train"]) + list(split.parts["val"])
    shuffled = label_shuffled(ds, fitted, seed=0)
    before = [ds.by_id(i).label for i in fitted]
    after = [shuffled.by_id(i).label for i in fitted]
    assert sorted(before) == sorted(after) and before != after
    assert all(shuffled.by_id(i).label == ds.by_id(i).label for i in split.parts["test"])

    twin = train_label_shuffled_twin(run, ds)
    assert twin == run / TWIN_DIR and (twin / "metrics.json").is_file()
    doc = explain_images(run, images[:2], tmp_path / "o", explainers=["similarity"])
    tests = [c["test"] for c in doc["sanity"]["similarity"]]
    assert tests == ["parameter_randomisation", "data_randomisation"]
    with pytest.raises(ConfigError, match="fingerprint"):
        train_label_shuffled_twin(run, label_shuffled(ds, fitted, seed=1))
