"""The report over real (tiny) runs: a demo-shaped folder of CoOp (2 seeds) and zero-shot runs on
tiny-clip, its per-image cards checked against the model's own outputs, the single-image
explainer checked against hand computations, the t-SNE points, and the `report` command."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conceptclip.errors import ConfigError


def _probs(method, images):
    pixels = method.backbone.preprocess(images)
    with torch.no_grad():
        feats = method.backbone.encode_image(pixels, patches=True)
        return method.probabilities(method.logits({"features": feats.global_, "patches": feats.patches})), feats


def test_explainer_matches_the_model_and_hand_computed_concept_scores(demo_like):
    from conceptclip.engine.load import load_run
    from conceptclip.explain import explain_method
    from conceptclip.explain.maps import center_crop_geometry
    from conceptclip.prompts import encode_prompts
    from conceptclip.report.explainer import RunExplainer
    from conceptclip.report.overlay import overlay

    run = demo_like["runs"] / "coop_seed1"
    ex = RunExplainer(run, bank=demo_like["bank"])
    assert ex.concepts.names == ["whiskers", "pointed ears", "floppy ears", "wet nose", "fins", "scales"]
    assert ex.concepts.prompts[0] == "a photo with whiskers."
    images = [Image.open(demo_like["data"] / c / "3.png").convert("RGB") for c in ("cat", "fish")]
    results = ex.explain_batch(images)

    method, _ = load_run(run)
    probs, feats = _probs(method, images)
    cf = encode_prompts(method.backbone, ex.concepts.prompts)
    cos = F.normalize(feats.global_, dim=-1) @ cf.t()  # s_bk = cos(x_b, c_k)
    gradcam = explain_method(method, method.backbone.preprocess(images)).maps
    for i, res in enumerate(results):
        pred = int(probs[i].argmax())
        assert res.prediction == method.classnames[pred]
        np.testing.assert_allclose([res.probabilities[c] for c in method.classnames], probs[i].numpy(), atol=1e-6)
        order = torch.argsort(cos[i], descending=True)
        assert [n for n, _ in res.concepts] == [ex.concepts.names[int(j)] for j in order]
        np.testing.assert_allclose([s for _, s in res.concepts], cos[i, order].numpy(), atol=1e-5)
        bars = res.top_concepts(6)
        assert bars[0]["bar"] == 1.0 and bars[-1]["bar"] == pytest.approx(0.0, abs=1e-6)
        names = [m.name for m in res.maps]
        assert names == ["gradcam", "chefer", "similarity", "concept"]
        shown = center_crop_geometry(images[i], method.backbone.image_size)
        expected = np.asarray(overlay(shown, gradcam[i, pred]), dtype=np.int16)
        assert np.abs(np.asarray(res.maps[0].image, dtype=np.int16) - expected).max() <= 1
        assert res.rationale[0].startswith(f"Predicted {res.prediction} with probability")
        assert any("learned prompt" in line for line in res.rationale)


def test_concept_sources(demo_like, tmp_path):
    from conceptclip.report.explainer import concept_template, load_concepts

    assert concept_template("a dermoscopy image of a {}.") == "a dermoscopy image with {}."
    assert concept_template("a photo of {}.") == "a photo with {}."
    assert concept_template("{}") == "a photo with {}."
    assert load_concepts(None, {"dataset": "no-such-bank"}) is None
    c = load_concepts(demo_like["bank"], {"template": "a photo of a {}."}, template="an image showing {}")
    assert c.prompts[-1] == "an image showing scales" and c.by_class["dog"] == ["floppy ears", "wet nose"]
    with pytest.raises(ConfigError, match="slot"):
        load_concepts(demo_like["bank"], {}, template="no slot")


def test_tsne_points_of_prompt_and_concept_tokens(demo_like):
    from conceptclip.engine.load import load_run
    from conceptclip.report.tsne import phrase_embeddings, prompt_token_points

    method, _ = load_run(demo_like["runs"] / "coop_seed1")
    bb = method.backbone
    tok = bb.tokenize(["pointed ears"])
    content = tok.input_ids[0, 1:int(tok.eot_index[0])]
    expected = bb.token_embedding.weight[content].mean(0)
    torch.testing.assert_close(phrase_embeddings(bb, ["pointed ears"])[0], expected.float())
    pts = prompt_token_points(method, ["whiskers", "fins", "scales"])
    assert pts.kinds == ["prompt"] * 2 + ["concept"] * 3 + ["class"] * 3
    assert pts.labels[:2] == ["ctx1", "ctx2"] and pts.labels[-3:] == ["cat", "dog", "fish"]
    assert pts.coords.shape == (8, 2) and np.isfinite(pts.coords).all()
    zs, _ = load_run(demo_like["runs"] / "zeroshot_seed1")
    assert prompt_token_points(zs, ["fins"]) is None  # no learned context tokens


def test_report_on_demo_shaped_folder(demo_like, tmp_path):
    from conceptclip.engine.load import load_run
    from conceptclip.report.build import build_report

    out = tmp_path / "report.html"
    summary = build_report([demo_like["runs"]], out, dataset=str(demo_like["data"]), bank=str(demo_like["bank"]),
                           images=3)
    html = out.read_text()
    assert summary["runs"] == 3 and summary["groups"] == 2 and summary["cards"] == 6
    assert html.count('class="card"') == 6
    assert html.count("<figcaption>t-SNE of the learned context tokens") == 1  # CoOp only, not zero-shot
    assert "Textual explanation of the learned prompts" in html
    # the CoOp cards: run coop_seed1's own predictions of the chosen test images
    method, _ = load_run(demo_like["runs"] / "coop_seed1")
    section = html.split('id="g0"')[1].split('id="g1"')[0]
    ids = re.findall(r'<div class="mono">([^<]+)</div>', section)
    preds = re.findall(r"predicted: ([a-z]+) \(", section)
    assert len(ids) == 3 and {i.split("/")[0] for i in ids} == {"cat", "dog", "fish"}
    from conceptclip.data import from_folder

    ds = from_folder(demo_like["data"])
    probs, _ = _probs(method, [Image.open(ds.by_id(i).path).convert("RGB") for i in ids])
    assert preds == [method.classnames[int(p.argmax())] for p in probs]
    assert "concept bars: cosine similarity" in section and "whiskers" in section
    # metrics table: mean ± std of the two CoOp seeds' test accuracy
    accs = [json.loads((demo_like["runs"] / f"coop_seed{s}" / "metrics.json").read_text())["test"]["accuracy"]
            for s in (1, 2)]
    assert f"{np.mean(accs):.3f} ± {np.std(accs, ddof=1):.3f}" in html


def test_report_without_dataset_says_why_there_are_no_cards(demo_like, tmp_path):
    from conceptclip.report.build import build_report

    out = tmp_path / "r.html"
    summary = build_report([demo_like["runs"] / "zeroshot_seed1"], out, images=2, tsne=False)
    assert summary["cards"] == 0
    assert "No per-image cards: the run&#39;s dataset &#39;data&#39; is not built in; pass --dataset" in out.read_text()


def test_report_command(demo_like, tmp_path):
    from typer.testing import CliRunner

    from conceptclip.cli import app

    out = tmp_path / "cli.html"
    res = CliRunner().invoke(app, ["report", str(demo_like["runs"]), "-o", str(out), "--images", "0", "--no-tsne"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.strip().splitlines()[-1])["groups"] == 2
    assert out.read_text().startswith("<!DOCTYPE html>")
    res = CliRunner().invoke(app, ["report", str(tmp_path / "nope"), "-o", str(tmp_path / "x.html")])
    assert res.exit_code != 0 and isinstance(res.exception, ConfigError)
    assert "run folder not found" in str(res.exception)


def test_a_run_that_does_not_load_gets_a_note_not_a_crash(demo_like, tmp_path):
    """A model.safetensors that does not fit its method (e.g. saved by an older version): the page
    is still written, with the reason in place of the cards."""
    import shutil

    from conceptclip.io import save_tensors
    from conceptclip.report.build import build_report

    run = tmp_path / "runs" / "coop_seed1"
    shutil.copytree(demo_like["runs"] / "coop_seed1", run)
    save_tensors(run / "model.safetensors", {"not_a_parameter": torch.zeros(3)})
    out = tmp_path / "r.html"
    summary = build_report([tmp_path / "runs"], out, dataset=str(demo_like["data"]), images=2)
    assert summary["cards"] == 0
    html = out.read_text()
    assert "No per-image cards or t-SNE: the run does not load (" in html and "model.safetensors" in html
