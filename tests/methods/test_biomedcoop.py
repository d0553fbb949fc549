"""BiomedCoOp, as the official code (HealthX-Lab/BiomedCoOp@7ceb5a8, trainers/BiomedCoOp/
biomedcoop_biomedclip.py): SCCM = MSE to the ensemble mean, KDSP = KL(sum) / numel to a teacher built
from the prompt sets kept by the median/MAD z rule, per-dataset (lambda_SCCM, lambda_KDSP, tau).
Expected values are computed here from those formulas with plain Python, not the module's helpers."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from conceptclip.errors import ConfigError
from conceptclip.knowledge.schema import Provenance, save_bank, simple_bank
from conceptclip.methods import create_method
from conceptclip.methods.biomedcoop import (batch_teacher_logits, dataset_values, distillation_loss, sccm_loss,
                                            select_prompt_sets, selective_teacher_logits)
from conceptclip.paths import shared_data_dir
from conceptclip.prompts import class_text_features, normalize
from conceptclip.prompts.ensembles import encode_ensembles, ensemble_mean, resolve_ensembles


# ---- the official formulas, written out independently --------------------------------------
def _softmax(row: list[float]) -> list[float]:
    m = max(row)
    e = [math.exp(v - m) for v in row]
    return [v / sum(e) for v in e]


def _kl_sum_over_numel(student: list[list[float]], teacher: list[list[float]], per: str = "numel") -> float:
    """sum_b sum_c p_bc (log p_bc - log q_bc), p = softmax(teacher), q = softmax(student), / (B C) or / B."""
    total = 0.0
    for s_row, t_row in zip(student, teacher):
        p, q = _softmax(t_row), _softmax(s_row)
        total += sum(pc * (math.log(pc) - math.log(qc)) for pc, qc in zip(p, q))
    return total / (len(student) * len(student[0]) if per == "numel" else len(student))


def _lower_median(values: list[float]) -> float:
    return sorted(values)[(len(values) - 1) // 2]  # torch.median: the lower of the two middle values


def _official_keep(scores: list[float], tau: float) -> list[bool]:
    med = _lower_median(scores)
    mad = _lower_median([abs(s - med) for s in scores])
    z = [(s - med) / mad for s in scores]
    mean = sum(z) / len(z)
    std = math.sqrt(sum((v - mean) ** 2 for v in z) / (len(z) - 1))  # Bessel's correction (torch.std)
    return [abs((v - mean) / std) <= tau for v in z]


@torch.no_grad()
def _enc(backbone, text: str) -> torch.Tensor:
    return backbone.encode_texts([text])[0].float()


def _dot(a, b) -> float:
    return sum(x * y for x, y in zip(a, b))


def _unit_vec(v):
    n = math.sqrt(_dot(v, v))
    return [x / n for x in v]


def _official_teacher(image: list[list[float]], sets: list[list[list[float]]], tau: float, scale: float):
    """image (B, D) unit rows; sets[c][i] unit prompt features. Returns (teacher logits (B, C), keep (P,))."""
    n_cls, n_sets = len(sets), len(sets[0])
    scores = []
    for i in range(n_sets):
        per_image = [max(scale * _dot(f, sets[c][i]) for c in range(n_cls)) for f in image]
        scores.append(sum(per_image) / len(per_image))
    keep = _official_keep(scores, tau)
    teacher_feats = []
    for c in range(n_cls):
        kept = [sets[c][i] for i in range(n_sets) if keep[i]]
        teacher_feats.append(_unit_vec([sum(col) / len(kept) for col in zip(*kept)]))
    return [[scale * _dot(f, t) for t in teacher_feats] for f in image], keep


# ---- SCCM ---------------------------------------------------------------------------------
def test_sccm_is_the_mean_squared_error():
    learned = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
    means = [[0.6, 0.8, 0.0], [0.0, 0.6, 0.8]]
    expected = sum((a - b) ** 2 for r1, r2 in zip(learned, means) for a, b in zip(r1, r2)) / 6
    got = sccm_loss(torch.tensor(learned), torch.tensor(means))
    assert abs(float(got) - expected) < 1e-7
    expected_l1 = sum(abs(a - b) for r1, r2 in zip(learned, means) for a, b in zip(r1, r2)) / 6
    assert abs(float(sccm_loss(torch.tensor(learned), torch.tensor(means), "l1")) - expected_l1) < 1e-7


# ---- KDSP ---------------------------------------------------------------------------------
def test_kdsp_is_kl_summed_over_numel():
    gen = torch.Generator().manual_seed(4)
    student, teacher = torch.randn(3, 4, generator=gen) * 3, torch.randn(3, 4, generator=gen) * 3
    expected = _kl_sum_over_numel(student.tolist(), teacher.tolist())
    assert abs(float(distillation_loss(student, teacher)) - expected) < 1e-6
    # the earlier reading divides by the batch size only: C times larger
    expected_b = _kl_sum_over_numel(student.tolist(), teacher.tolist(), "batch")
    assert abs(float(distillation_loss(student, teacher, reduction="batchmean")) - expected_b) < 1e-5
    assert abs(expected_b - 4 * expected) < 1e-9
    # a temperature (not in the official code; T = 1 there): T^2 KL(softmax(q / T) || softmax(l / T))
    t = 2.5
    expected_t = t * t * _kl_sum_over_numel((student / t).tolist(), (teacher / t).tolist())
    assert abs(float(distillation_loss(student, teacher, temperature=t)) - expected_t) < 1e-6


# ---- prompt-set selection -----------------------------------------------------------------
def test_selection_keeps_prompt_sets_by_the_median_mad_z_rule():
    scores = [10.0, 10.4, 9.7, 10.1, 12.5, 9.9, 10.2, 7.0]
    for tau in (0.5, 1.0, 1.5, 2.0):
        assert select_prompt_sets(torch.tensor(scores), tau).tolist() == _official_keep(scores, tau)
    assert _official_keep(scores, 1.5) == [True, True, True, True, False, True, True, False]


def test_prompt_set_scores_by_hand():
    from conceptclip.methods.biomedcoop import prompt_set_scores

    gen = torch.Generator().manual_seed(2)
    image, feats = torch.randn(3, 5, generator=gen), torch.randn(2, 4, 5, generator=gen)
    for scale in (1.0, 7.0):
        expected = [sum(max(scale * _dot(f, feats[c, i].tolist()) for c in range(2)) for f in image.tolist()) / 3
                    for i in range(4)]
        got = prompt_set_scores(image, feats, scale) if scale != 1.0 else prompt_set_scores(image, feats)
        torch.testing.assert_close(got, torch.tensor(expected), rtol=1e-5, atol=1e-5)


def test_selection_when_std_z_is_below_one():
    scores = [0.0, 0.0, 2.0, 2.0, 2.0, 4.0, 4.0]  # MAD 2 > std 1.63: std z = 0.82
    assert _official_keep(scores, 1.0) == [False, False, True, True, True, False, False]
    assert select_prompt_sets(torch.tensor(scores), 1.0).tolist() == _official_keep(scores, 1.0)


def test_selection_uses_bessels_std():
    """A threshold between |z'| with the n - 1 and the n denominators: only Bessel's correction keeps the point."""
    scores = [1.0, 2.0, 3.0, 4.0, 9.0]
    z = [(s - 3.0) / 1.0 for s in scores]  # median 3, MAD 1
    mean = sum(z) / 5
    unbiased = math.sqrt(sum((v - mean) ** 2 for v in z) / 4)
    biased = math.sqrt(sum((v - mean) ** 2 for v in z) / 5)
    tau = (abs(z[4] - mean) / unbiased + abs(z[4] - mean) / biased) / 2
    assert _official_keep(scores, tau)[4] is True
    assert select_prompt_sets(torch.tensor(scores), tau).tolist() == [True] * 5


def test_selection_keeps_everything_when_the_mad_is_zero_or_nothing_passes():
    assert select_prompt_sets(torch.tensor([1.0, 1.0, 1.0, 5.0]), 1.5).tolist() == [True] * 4
    assert select_prompt_sets(torch.tensor([1.0, 1.0, 1.0, 1.0, 9.0]), 1.5).tolist() == [True] * 5  # MAD 0
    assert select_prompt_sets(torch.tensor([1.0, 2.0]), 0.5).tolist() == [True, True]  # two scores: MAD 0
    assert _official_keep([0.0, 1.0, 2.0, 3.0], 0.3) == [False] * 4  # |z'| = 0.39 and 1.16
    assert select_prompt_sets(torch.tensor([0.0, 1.0, 2.0, 3.0]), 0.3).tolist() == [True] * 4
    assert select_prompt_sets(torch.tensor([0.0, 1.0, 2.0, 3.0]), 0.5).tolist() == [False, True, True, False]
    assert select_prompt_sets(torch.tensor([3.0]), 0.5).tolist() == [True]


def test_batch_teacher_recomputed_by_hand():
    gen = torch.Generator().manual_seed(7)
    image = normalize(torch.randn(5, 6, generator=gen))
    sets = normalize(torch.randn(3, 8, 6, generator=gen))
    sets[1, 2] = -sets[1, 2]  # an outlying prompt set
    sets[0, 5] = normalize(image.mean(0))  # and a very confident one
    for tau, scale in ((0.75, 20.0), (1.5, 20.0), (0.75, 1.0)):
        expected, keep = _official_teacher(image.tolist(), sets.tolist(), tau, scale)
        got, got_keep = batch_teacher_logits(image, sets, tau, scale) if scale != 1.0 else batch_teacher_logits(image, sets, tau)
        assert got_keep.tolist() == keep
        torch.testing.assert_close(got, torch.tensor(expected), rtol=1e-5, atol=1e-5)
    assert not all(_official_teacher(image.tolist(), sets.tolist(), 0.75, 20.0)[1])  # the case prunes something


# ---- the earlier per-image reading (selection="per_image") --------------------------------
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
    # tau = 1: a class with one real prompt keeps it (teacher = its similarity); a padded class drops -0.9
    feats1 = torch.tensor([[_unit(0.9), _unit(0.8), _unit(-0.9), [0.0, 0.0]], [_unit(0.3), [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]])
    mask1 = torch.tensor([[True, True, True, False], [True, False, False, False]])
    # class 0: mu = 0.2667, deviations (0.633, 0.533, -1.167), sigma = 0.826 -> -0.9 dropped, teacher 0.85
    teacher, keep = selective_teacher_logits(image, feats1, mask1, tau=1.0)
    assert keep[0].tolist() == [[True, True, False, False], [True, False, False, False]]
    torch.testing.assert_close(teacher, torch.tensor([[0.85, 0.3]]))
    # padding never enters mu or sigma: (0.9, 0.9, 0.5) + padding, mu 0.767, sigma 0.189 -> 0.5 dropped at tau 1
    feats2 = torch.tensor([[_unit(0.9), _unit(0.9), _unit(0.5), [0.0, 0.0]]])
    _, keep = selective_teacher_logits(image, feats2, torch.tensor([[True, True, True, False]]), tau=1.0)
    assert keep[0].tolist() == [[True, True, False, False]]
    # a loose threshold keeps everything: mean of all four = 0.4125
    teacher, keep = selective_teacher_logits(image, feats, mask, tau=2.0, scale=1.0)
    assert bool(keep[0, 0].all())
    torch.testing.assert_close(teacher[0, 0], torch.tensor(0.4125))


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
    """The total of the official trainer, on a dataset outside the table: (0.75, 0.75, 1.5), ours."""
    given = {c: [f"a photo of a {c}.", f"an image of {c} with irregular borders.", f"{c}, a skin lesion.",
                 f"a dermoscopy image of {c}.", f"{c} seen up close."] for c in classes}
    method = create_method("biomedcoop", tiny_clip, classes, {"n_prompts": 5}, ensembles=given)
    assert (method.lambda_sccm, method.lambda_kdsp, method.tau) == (0.75, 0.75, 1.5)
    with torch.no_grad():
        method.prompt.ctx.add_(0.3 * torch.randn(method.prompt.ctx.shape, generator=torch.Generator().manual_seed(1)))
    terms = method.loss(batch)
    scale = float(tiny_clip.logit_scale)
    text = normalize(method.prompt()).detach()
    img = normalize(batch["features"])
    logits = (scale * img @ text.t()).tolist()
    feats = [[_enc(tiny_clip, p).tolist() for p in given[c]] for c in classes]
    feats = [[_unit_vec(f) for f in fc] for fc in feats]
    means = [_unit_vec([sum(col) / len(fc) for col in zip(*fc)]) for fc in feats]
    sccm = sum((a - b) ** 2 for r1, r2 in zip(text.tolist(), means) for a, b in zip(r1, r2)) / (len(classes) * len(means[0]))
    teacher, _ = _official_teacher(img.tolist(), feats, 1.5, scale)
    kdsp = _kl_sum_over_numel(logits, teacher)
    labels = batch["labels"].tolist()
    ce = sum(-math.log(_softmax(row)[y]) for row, y in zip(logits, labels)) / len(labels)
    assert abs(float(terms["sccm"]) - sccm) < 1e-6
    assert abs(float(terms["kdsp"]) - kdsp) < 1e-5
    assert abs(terms["loss"].item() - (ce + 0.75 * sccm + 0.75 * kdsp)) < 1e-4
    _, keep = _official_teacher(img.tolist(), feats, 1.5, scale)
    assert abs(float(terms["kept_fraction"]) - sum(keep) / len(keep)) < 1e-6
    # inference uses the learned prompts only
    torch.testing.assert_close(method.logits(batch), torch.tensor(logits))


def test_paper_defaults(tiny_clip, classes):
    method = create_method("biomedcoop", tiny_clip, classes, ensembles={c: [c] for c in classes})
    c = method.config
    assert (c.n_ctx, c.ctx_init, c.n_prompts, c.sccm, c.kdsp_reduction, c.selection, c.temperature, c.init_std) == \
        (4, "a photo of a", 50, "mse", "numel", "batch", 1.0, 0.02)
    assert (c.lambda_sccm, c.lambda_kdsp, c.tau) == (None, None, None)  # None: the dataset's values
    t = method.train_defaults
    assert (t["optimizer"], t["lr"], t["batch_size"], t["epochs"], t["warmup_epochs"], t["warmup_lr"]) == \
        ("sgd", 0.0025, 4, 100, 1, 1e-5)


DATASET_ALIAS = {"ph2": "dermamnist", "covid19": "covid"}


@pytest.mark.parametrize("name,values", [
    ("btmri", (0.5, 0.25, 1.5)), ("BUSI", (0.75, 0.75, 1.5)), ("chmnist", (0.25, 0.25, 1.5)),
    ("covid", (0.5, 2.0, 1.5)), ("COVID_19", (0.5, 2.0, 1.5)), ("ctkidney", (1.0, 0.5, 1.5)), ("DermaMNIST", (5.0, 20.0, 1.5)),
    ("kneexray", (5.0, 20.0, 1.75)), ("kvasir", (0.75, 0.75, 1.5)), ("lungcolon", (0.5, 0.5, 1.5)),
    ("octmnist", (1.0, 0.75, 1.5)), ("retina", (0.25, 0.25, 1.5)),
    ("ph2", (5.0, 20.0, 1.5)),  # dermoscopy: DermaMNIST's values
    ("shapes", (0.75, 0.75, 1.5)),  # a user's own dataset: ours (median of the table)
])
def test_per_dataset_values(tiny_clip, name, values):
    ds = SimpleNamespace(name=name, classnames=["a", "b"])
    method = create_method("biomedcoop", tiny_clip, ["a", "b"], ensembles={"a": ["x"], "b": ["y"]}, dataset=ds)
    assert (method.lambda_sccm, method.lambda_kdsp, method.tau) == values
    assert method.describe()["values"]["source"].startswith("ours" if name == "shapes" else "official")
    given = create_method("biomedcoop", tiny_clip, ["a", "b"], {"lambda_sccm": 25, "tau": 2}, dataset=ds,
                          ensembles={"a": ["x"], "b": ["y"]})
    assert (given.lambda_sccm, given.lambda_kdsp, given.tau) == (25.0, values[1], 2.0)
    source = "ours: median of the official few-shot configs (dataset not in the table)" if name == "shapes" else \
        f"official few-shot config {DATASET_ALIAS.get(name.lower().replace('_', ''), name.lower())}.yaml"
    assert given.describe()["values"]["source"] == "given / " + source


def test_smallest_valid_options(tiny_clip, classes):
    method = create_method("biomedcoop", tiny_clip, classes, {"n_prompts": 1, "tau": 0.0},
                           ensembles={c: [c] for c in classes})
    assert (method.config.n_prompts, method.tau) == (1, 0.0)


def test_dataset_values_table():
    """The official few-shot configs, written out here (HealthX-Lab/BiomedCoOp configs/trainers/BiomedCoOp/few_shot)."""
    official = {"btmri": (0.5, 0.25, 1.5), "busi": (0.75, 0.75, 1.5), "chmnist": (0.25, 0.25, 1.5),
                "covid": (0.5, 2.0, 1.5), "ctkidney": (1.0, 0.5, 1.5), "dermamnist": (5.0, 20.0, 1.5),
                "kneexray": (5.0, 20.0, 1.75), "kvasir": (0.75, 0.75, 1.5), "lungcolon": (0.5, 0.5, 1.5),
                "octmnist": (1.0, 0.75, 1.5), "retina": (0.25, 0.25, 1.5)}
    for name, values in official.items():
        assert dataset_values(name) == (values, f"official few-shot config {name}.yaml")
    assert dataset_values("Lung_Colon")[0] == official["lungcolon"] and dataset_values("COVID_19")[0] == official["covid"]
    assert dataset_values("PH2")[0] == official["dermamnist"]
    medians = tuple(sorted(v[i] for v in official.values())[5] for i in range(3))
    assert dataset_values("shapes")[0] == medians == (0.75, 0.75, 1.5)
    assert dataset_values(None)[1].startswith("ours")


def test_prompt_sets_truncate_to_n_prompts_and_repeat_short_lists(tiny_clip):
    given = {"a": [f"a prompt {i}." for i in range(7)], "b": ["b one.", "b two."]}
    method = create_method("biomedcoop", tiny_clip, ["a", "b"], {"n_prompts": 5}, ensembles=given)
    feats, mask, means, sets = method.encoded_ensembles()
    enc = {p: _enc(tiny_clip, p) for p in given["a"] + given["b"]}
    for i in range(5):
        torch.testing.assert_close(sets[0, i], normalize(enc[f"a prompt {i}."]))
        torch.testing.assert_close(sets[1, i], normalize(enc[["b one.", "b two."][i % 2]]))
    mean_a = normalize(torch.stack([normalize(enc[f"a prompt {i}."]) for i in range(5)]).mean(0))  # first 5 only
    mean_b = normalize(torch.stack([normalize(enc["b one."]), normalize(enc["b two."])]).mean(0))  # not the cycled 3:2
    torch.testing.assert_close(means[0], mean_a)
    torch.testing.assert_close(means[1], mean_b)


def test_bad_options_fail_clearly(tiny_clip, classes):
    ens = {c: [c] for c in classes}
    for opts, match in (({"sccm": "l2"}, "sccm="), ({"kdsp_reduction": "mean"}, "kdsp_reduction="),
                        ({"selection": "image"}, "selection="), ({"tau": -1.0}, "tau="), ({"n_prompts": 0}, "n_prompts="),
                        ({"lambda_kdsp": "big"}, "lambda_kdsp=")):
        with pytest.raises(ConfigError, match=match):
            create_method("biomedcoop", tiny_clip, classes, opts, ensembles=ens)


def test_a_bank_describing_none_of_the_classes_is_refused(tmp_path, tiny_clip):
    """Never another dataset's prompts silently replaced by templates for every class: name the fix."""
    with pytest.raises(ConfigError, match="class_map"):
        create_method("biomedcoop", tiny_clip, ["circle", "square"], {"bank": str(_bank_file(tmp_path))})


def test_earlier_reading_stays_reachable(tiny_clip, classes, batch):
    sizes = {classes[0]: 1, classes[1]: 2, classes[2]: 4}  # unequal ensembles
    given = {c: [f"a photo of a {c}.", f"{c}, a skin lesion.", f"{c} seen up close.", f"{c} again."][:sizes[c]]
             for c in classes}
    old = {"sccm": "l1", "kdsp_reduction": "batchmean", "selection": "per_image", "lambda_sccm": 25, "lambda_kdsp": 1}
    method = create_method("biomedcoop", tiny_clip, classes, old, ensembles=given)
    terms = method.loss(batch)
    text = normalize(method.prompt()).detach()
    img = normalize(batch["features"])
    logits = tiny_clip.logit_scale * img @ text.t()
    feats, mask = encode_ensembles(tiny_clip, list(given.values()))
    sccm = (text - ensemble_mean(feats, mask)).abs().mean()
    teacher, _ = selective_teacher_logits(img, feats, mask, 1.5, tiny_clip.logit_scale)
    kdsp = F.kl_div(F.log_softmax(logits, -1), F.softmax(teacher, -1), reduction="batchmean")
    ce = F.cross_entropy(logits, batch["labels"])
    torch.testing.assert_close(terms["loss"], ce + 25.0 * sccm + kdsp, rtol=1e-4, atol=1e-5)
    _, keep = selective_teacher_logits(img, feats, mask, 1.5, tiny_clip.logit_scale)
    kept = sum(int(keep[b, c].sum()) / int(mask[c].sum()) for b in range(keep.shape[0]) for c in range(3))
    assert abs(float(terms["kept_fraction"]) - kept / (keep.shape[0] * 3)) < 1e-6


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
