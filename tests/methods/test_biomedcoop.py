"""BiomedCoOp: SCCM (L1 to the ensemble-mean features), KDSP (distillation from the ensemble after
per-image z-score pruning of outlier prompts), ensembles from the knowledge layer."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from conceptclip.errors import ConfigError
from conceptclip.knowledge.schema import Provenance, save_bank, simple_bank
from conceptclip.methods import create_method
from conceptclip.methods.biomedcoop import distillation_loss, sccm_loss, selective_teacher_logits
from conceptclip.paths import shared_data_dir
from conceptclip.prompts import class_text_features, normalize
from conceptclip.prompts.ensembles import encode_ensembles, ensemble_mean, resolve_ensembles


def test_sccm_hand_computed():
    learned = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    means = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    # |diff| = (0.4, 0.8, 0, 0) -> mean 0.3
    assert abs(float(sccm_loss(learned, means)) - 0.3) < 1e-7


def _unit(s: float) -> list[float]:
    return [s, math.sqrt(1 - s * s)]


def test_selective_teacher_prunes_the_outlier_prompt():
    image = torch.tensor([[1.0, 0.0]])  # cos(image, [s, sqrt(1 - s^2)]) = s
    feats = torch.tensor([[_unit(0.9), _unit(0.8), _unit(0.85), _unit(-0.9)],
                          [_unit(0.1), _unit(0.1), [0.0, 0.0], [0.0, 0.0]]])
    mask = torch.tensor([[True, True, True, True], [True, True, False, False]])
    # class 0: mu = 0.4125, sigma = sqrt(mean of (0.4875, 0.3875, 0.4375, -1.3125)^2) = 0.7586;
    # 1.5 sigma = 1.138 < 1.3125 -> the -0.9 prompt is dropped, teacher = mean(0.9, 0.8, 0.85) = 0.85.
    # class 1: sigma = 0 -> both real prompts kept (padding never), teacher 0.1
    teacher, keep = selective_teacher_logits(image, feats, mask, tau=1.5, scale=10.0)
    assert keep[0].tolist() == [[True, True, True, False], [True, True, False, False]]
    torch.testing.assert_close(teacher, torch.tensor([[8.5, 1.0]]))
    # a loose threshold keeps everything: mean of all four = 0.4125
    teacher, keep = selective_teacher_logits(image, feats, mask, tau=2.0, scale=1.0)
    assert bool(keep[0, 0].all())
    torch.testing.assert_close(teacher[0, 0], torch.tensor(0.4125))


def test_distillation_hand_computed():
    student = torch.tensor([[0.0, 0.0]])
    teacher = torch.tensor([[math.log(3.0), 0.0]])  # (0.75, 0.25) vs (0.5, 0.5)
    expected = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert abs(float(distillation_loss(student, teacher)) - expected) < 1e-6


def test_padded_ensemble_means_match_prompt_ensembling(tiny_clip):
    prompts = {"melanoma": ["a dark lesion.", "an irregular mole with a blue veil.", "melanoma."],
               "nevus": ["a small round mole."]}
    feats, mask = encode_ensembles(tiny_clip, list(prompts.values()))
    assert feats.shape[:2] == (2, 3) and mask.tolist() == [[True] * 3, [True, False, False]]
    torch.testing.assert_close(ensemble_mean(feats, mask), class_text_features(tiny_clip, list(prompts), prompts))


def _bank_file(tmp_path):
    prov = Provenance(kind="llm", citation="test prompts", model="test-model")
    bank = simple_bank("toy", {"Melanoma": ["melanoma is dark.", "melanoma is dark.", "irregular borders."],
                               "melanocytic nevus": ["a round mole."]}, prov, kind="prompts")
    return save_bank(bank, tmp_path / "bank.json")


def test_resolve_ensembles_bank_map_fallback_and_cleanup(tmp_path):
    ens = resolve_ensembles(["melanoma", "common nevus", "atypical nevus"], str(_bank_file(tmp_path)),
                            {"common nevus": "melanocytic nevus"}, templates=("a photo of a {}.",))
    assert ens.prompts == [["melanoma is dark.", "irregular borders."], ["a round mole."],
                           ["a photo of a atypical nevus."]]  # the exact duplicate is removed
    assert ens.removed == {"exact_duplicate": 1}
    assert ens.sources["melanoma"].startswith("bank toy") and ens.sources["atypical nevus"].startswith("templates")
    with pytest.raises(ConfigError, match="not classes of bank"):
        resolve_ensembles(["melanoma"], str(tmp_path / "bank.json"), {"melanoma": "glioma"})
    with pytest.raises(ConfigError, match="not among"):
        resolve_ensembles(["melanoma"], str(tmp_path / "bank.json"), {"nevus": "melanocytic nevus"})


def test_loss_is_ce_plus_weighted_sccm_and_kdsp(tiny_clip, classes, batch):
    given = {c: [f"a photo of a {c}.", f"an image of {c} with irregular borders.", f"{c}, a skin lesion."]
             for c in classes}
    method = create_method("biomedcoop", tiny_clip, classes, ensembles=given)
    assert (method.config.n_ctx, method.config.ctx_init) == (4, "a photo of a")
    assert method.train_defaults["lr"] == 0.0025 and method.train_defaults["batch_size"] == 4
    with torch.no_grad():
        method.prompt.ctx.add_(0.3 * torch.randn(method.prompt.ctx.shape, generator=torch.Generator().manual_seed(1)))
    terms = method.loss(batch)
    text = normalize(method.prompt())
    img = normalize(batch["features"])
    logits = tiny_clip.logit_scale * img @ text.t()
    feats, mask = encode_ensembles(tiny_clip, list(given.values()))
    sccm = (text - ensemble_mean(feats, mask)).abs().mean()
    teacher, _ = selective_teacher_logits(img, feats, mask, 1.5, tiny_clip.logit_scale)
    kdsp = F.kl_div(F.log_softmax(logits, -1), F.softmax(teacher, -1), reduction="batchmean")
    ce = F.cross_entropy(logits, batch["labels"])
    torch.testing.assert_close(terms["sccm"], sccm.detach(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(terms["kdsp"], kdsp.detach(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(terms["loss"], ce + 25.0 * sccm + kdsp, rtol=1e-4, atol=1e-5)
    # inference uses the learned prompts only
    torch.testing.assert_close(method.logits(batch), logits)


def test_given_ensembles_must_cover_every_class(tiny_clip, classes):
    with pytest.raises(ConfigError, match="no prompts for classes"):
        create_method("biomedcoop", tiny_clip, classes, ensembles={"melanoma": ["a dark mole."]})


@pytest.mark.shared_data
def test_real_biomedcoop_bank_for_ph2_classes(tiny_clip):
    root = shared_data_dir() / "banks" / "biomedcoop"
    if not (root / "prompts" / "DermaMNIST.json").is_file():
        pytest.skip(f"BiomedCoOp banks not found at {root}")
    from conceptclip.bench.presets import method_options

    opts = method_options("ph2", "biomedcoop")
    method = create_method("biomedcoop", tiny_clip, ["common nevus", "atypical nevus", "melanoma"], opts)
    summary = method.describe()["ensembles"]
    assert summary["sources"] == {"common nevus": "bank biomedcoop/DermaMNIST: melanocytic nevus",
                                  "atypical nevus": "templates (4)",
                                  "melanoma": "bank biomedcoop/DermaMNIST: melanoma"}
    assert summary["prompts_per_class"]["melanoma"] >= 45  # 50 LLM prompts, minus exact duplicates
    assert any("pigment" in p.lower() for p in method.ensembles.prompts[2])


def test_class_map_may_name_the_other_half_of_the_dataset(tmp_path, tiny_clip):
    """Base-to-novel builds a head over the novel classes only; the dataset's map still applies."""
    from types import SimpleNamespace

    opts = {"bank": str(_bank_file(tmp_path)), "class_map": {"common nevus": "melanocytic nevus"}}
    ds = SimpleNamespace(classnames=["melanoma", "common nevus", "atypical nevus"])
    method = create_method("biomedcoop", tiny_clip, ["melanoma", "atypical nevus"], opts, dataset=ds)
    assert method.ensembles.sources["melanoma"].startswith("bank toy")
    assert method.ensembles.sources["atypical nevus"].startswith("templates")
