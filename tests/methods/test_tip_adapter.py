"""Tip-Adapter / Tip-Adapter-F: the cache logits alpha * exp(-beta (1 - f K^T)) V added to zero-shot
CLIP (Zhang et al., ECCV 2022), alpha and beta searched on validation only."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conceptclip.data import Dataset, Sample, fewshot_split, from_folder, holdout_split
from conceptclip.engine import TrainConfig, fit, run_experiment
from conceptclip.engine.data import Part
from conceptclip.engine.load import load_run
from conceptclip.methods import create_method
from conceptclip.methods.tip_adapter import search_alpha_beta, search_grid
from conceptclip.prompts import normalize
from conceptclip.prompts.adapters import cache_affinity, cache_logits


def test_cache_logits_hand_computed():
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    values = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    f = torch.tensor([[1.0, 0.0]])
    # affinities (1, 0, 0.6) -> exp(-2 (1 - a)) = (1, e^-2, e^-0.8); class 0: 1, class 1: e^-2 + e^-0.8
    out = cache_logits(f, keys, values, beta=2.0)
    torch.testing.assert_close(out, torch.tensor([[1.0, math.exp(-2) + math.exp(-0.8)]]))
    assert float(cache_affinity(torch.tensor(1.0), 5.5)) == 1.0
    assert cache_logits(f, keys[:0], values[:0], 2.0).shape == (1, 2)  # empty cache -> zeros


def test_reference_search_grid():
    g = search_grid(7.0, 200)
    assert len(g) == 200 and abs(float(g[0]) - 0.1) < 1e-12
    assert abs(float(g[1]) - (0.1 + 6.9 / 200)) < 1e-12 and float(g[-1]) < 7.0
    a = search_grid(3.0, 20)
    assert abs(float(a[-1]) - (0.1 + 19 * 2.9 / 20)) < 1e-12


def test_search_maximises_val_accuracy_then_minimises_val_ce():
    gen = torch.Generator().manual_seed(0)
    zs = torch.randn(10, 3, generator=gen)
    aff = torch.rand(10, 6, generator=gen) * 2 - 1
    values = F.one_hot(torch.tensor([0, 1, 2, 0, 1, 2]), 3).float()
    labels = torch.randint(0, 3, (10,), generator=gen)
    alphas, betas = torch.tensor([0.5, 1.0, 4.0]), torch.tensor([1.0, 3.0, 8.0])
    best = None
    for b in betas.tolist():  # brute force, written out independently
        for a in alphas.tolist():
            logits = zs + a * torch.exp(-b * (1 - aff)) @ values
            key = ((logits.argmax(1) == labels).float().mean().item(), -F.cross_entropy(logits, labels).item())
            if best is None or key > best[0]:
                best = (key, a, b)
    got = search_alpha_beta(zs, aff, values, labels, alphas, betas)
    assert (got["alpha"], got["beta"]) == (best[1], best[2])
    assert abs(got["val_accuracy"] - best[0][0]) < 1e-6
    assert abs(got["val_cross_entropy"] + best[0][1]) < 1e-6
    # an empty cache ties every grid point exactly: the first one (beta outer, alpha inner) is kept
    tie = search_alpha_beta(zs, aff, torch.zeros_like(values), labels, alphas, betas)
    assert (tie["alpha"], tie["beta"]) == (0.5, 1.0)


def test_logits_are_zero_shot_plus_alpha_cache(tiny_clip, classes, batch):
    method = create_method("tip_adapter", tiny_clip, classes)
    train = {k: v[:9] for k, v in batch.items()}
    val = {k: v[9:] for k, v in batch.items()}
    chosen = method.fit_closed_form(train, val)
    assert chosen["cache_size"] == 9 and 0.1 <= chosen["alpha"] < 3.0 and 0.1 <= chosen["beta"] < 7.0
    zs = create_method("zeroshot", tiny_clip, classes).logits(val)
    keys = normalize(train["features"])
    expected = zs + chosen["alpha"] * torch.exp(-chosen["beta"] * (1 - normalize(val["features"]) @ keys.t())) \
        @ F.one_hot(train["labels"], 3).float()
    torch.testing.assert_close(method.logits(val), expected, rtol=1e-5, atol=1e-5)


class _NoLabels(dict):
    def __getitem__(self, key):
        if key == "labels":
            raise AssertionError("test labels were read")
        return super().__getitem__(key)

    def get(self, key, default=None):
        if key == "labels":
            raise AssertionError("test labels were read")
        return super().get(key, default)


@pytest.mark.parametrize("name", ["tip_adapter", "tip_adapter_f"])
def test_prediction_never_reads_labels(name, tiny_clip, classes, batch):
    method = create_method(name, tiny_clip, classes)
    method.fit_closed_form({k: v[:6] for k, v in batch.items()}, {k: v[6:] for k, v in batch.items()})
    logits = method.logits(_NoLabels(features=batch["features"], labels=batch["labels"]))
    assert logits.shape == (12, 3)


def _folder(tmp_path, n_per_class=10):
    rng = np.random.default_rng(0)
    for c, name in enumerate(["melanoma", "nevus", "keratosis"]):
        (tmp_path / name).mkdir(parents=True)
        for i in range(n_per_class):
            arr = np.clip(rng.normal(50 + 70 * c, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(tmp_path / name / f"{i}.png")
    return from_folder(tmp_path, name="toy")


@pytest.mark.parametrize("name", ["tip_adapter", "tip_adapter_f"])
def test_hyperparameters_come_from_validation_only(name, tmp_path, tiny_clip):
    """Poisoned test labels change nothing that fitting chose: same alpha/beta (before and, for
    Tip-Adapter-F, after fine-tuning), same test probabilities."""
    clean = _folder(tmp_path / "data")
    split = fewshot_split(clean, holdout_split(clean), shots=2, seed=1)
    test_ids = set(split.parts["test"])
    poisoned = Dataset(clean.name, clean.classnames,
                       [Sample(s.id, s.path, label=(s.label + 1) % 3) if s.id in test_ids else s for s in clean.samples],
                       template=clean.template, root=clean.root)
    train = {"lr": 0.1}  # large enough that Tip-Adapter-F's second search moves (checked in the reload test)
    a = run_experiment(name, clean, split, tiny_clip, tmp_path / "clean", train_config=train)
    b = run_experiment(name, poisoned, split, tiny_clip, tmp_path / "poisoned", train_config=train)
    assert ("after_fit" in a["closed_form"]) == (name == "tip_adapter_f")
    assert a["closed_form"] == b["closed_form"]
    assert a["test"]["accuracy"] != b["test"]["accuracy"]  # the poison is real
    probs = [[line.split(",")[3:] for line in (tmp_path / d / "predictions.csv").read_text().splitlines()[1:]]
             for d in ("clean", "poisoned")]
    assert probs[0] == probs[1]


def test_tip_adapter_f_fine_tunes_keys_only_and_reloads(tiny_clip, classes, batch):
    method = create_method("tip_adapter_f", tiny_clip, classes)
    method.fit_closed_form(batch, batch)
    keys0, values0 = method.cache_keys.detach().clone(), method.cache_values.clone()
    opt = torch.optim.SGD(method.trainable_parameters(), lr=0.5)
    for _ in range(3):
        opt.zero_grad()
        method.loss(batch)["loss"].backward()
        opt.step()
    assert not torch.allclose(method.cache_keys, keys0)
    assert torch.equal(method.cache_values, values0)
    fresh = create_method("tip_adapter_f", tiny_clip, classes)
    fresh.load_learned_state(method.learned_state())
    torch.testing.assert_close(fresh.logits(batch), method.logits(batch))


def _part(backbone, n: int, seed: int) -> Part:
    """`n` noisy features around 3 fixed class centres (noisy enough that fine-tuning moves the search)."""
    y = torch.arange(3).repeat(n // 3)
    centres = torch.randn(3, backbone.embed_dim, generator=torch.Generator().manual_seed(42))
    x = centres[y] + 2.0 * torch.randn(len(y), backbone.embed_dim, generator=torch.Generator().manual_seed(seed))
    return Part([str(i) for i in range(len(y))], y, tensors={"features": x, "labels": y, "index": torch.arange(len(y))})


def test_tip_adapter_f_re_searches_alpha_beta_with_the_fine_tuned_keys(tiny_clip, classes):
    """After fine-tuning, alpha/beta are what a direct grid search on val with the fine-tuned keys picks
    (here not the pre-training choice), and they are part of the learned state."""
    torch.manual_seed(0)
    method = create_method("tip_adapter_f", tiny_clip, classes)
    train, val = _part(tiny_clip, 12, 0), _part(tiny_clip, 9, 1)
    cfg = TrainConfig(epochs=10, lr=0.1, batch_size=4, optimizer="adamw", warmup_epochs=0, progress=False)
    result = fit(method, train, val, cfg)
    keys = method.cache_keys.detach()
    assert not torch.allclose(keys, normalize(train.tensors["features"]))  # the keys were fine-tuned
    fv = normalize(val.tensors["features"])
    zs = create_method("zeroshot", tiny_clip, classes).logits(val.tensors)
    direct = search_alpha_beta(zs, fv @ keys.t(), F.one_hot(train.labels, 3).float(), val.labels,
                               search_grid(3.0, 20), search_grid(7.0, 200))
    after = result.closed_form["after_fit"]
    assert (after["alpha"], after["beta"]) == (direct["alpha"], direct["beta"])
    assert after["val_accuracy"] == direct["val_accuracy"]
    assert (float(method.alpha), float(method.beta)) == pytest.approx((direct["alpha"], direct["beta"]))
    assert (after["alpha"], after["beta"]) != (result.closed_form["alpha"], result.closed_form["beta"])
    fresh = create_method("tip_adapter_f", tiny_clip, classes)
    fresh.load_learned_state(method.learned_state())
    assert (float(fresh.alpha), float(fresh.beta)) == (float(method.alpha), float(method.beta))


def test_reloaded_tip_adapter_f_run_scores_with_the_re_searched_values(tmp_path, tiny_clip):
    data = _folder(tmp_path / "data")
    split = fewshot_split(data, holdout_split(data), shots=2, seed=1)
    metrics = run_experiment("tip_adapter_f", data, split, tiny_clip, tmp_path / "run", train_config={"lr": 0.1})
    method, _ = load_run(tmp_path / "run")
    chosen = metrics["closed_form"]
    after = chosen["after_fit"]
    assert (after["alpha"], after["beta"]) != (chosen["alpha"], chosen["beta"])
    assert (float(method.alpha), float(method.beta)) == pytest.approx((after["alpha"], after["beta"]))


def test_search_counts_ties_and_breaks_them_by_loss_then_grid_order():
    """Validation with one image per class: most of the grid ties on accuracy; the counts and the
    choice follow the documented rule (accuracy, then lower CE, then the earlier grid point)."""
    gen = torch.Generator().manual_seed(1)
    zs = torch.randn(3, 3, generator=gen)
    aff = torch.rand(3, 6, generator=gen) * 2 - 1
    values = F.one_hot(torch.tensor([0, 1, 2, 0, 1, 2]), 3).float()
    labels = torch.tensor([0, 1, 2])
    alphas, betas = search_grid(3.0, 20), search_grid(7.0, 50)
    rows = []
    for j, b in enumerate(betas.tolist()):
        for i, a in enumerate(alphas.tolist()):
            logits = zs.double() + a * torch.exp(-b * (1 - aff.double())) @ values.double()
            acc = (logits.argmax(1) == labels).double().mean().item()
            ce = F.cross_entropy(logits, labels).item()
            rows.append((acc, ce, j, i, a, b))
    best_acc = max(r[0] for r in rows)
    tied = [r for r in rows if r[0] == best_acc]
    want = min(tied, key=lambda r: (r[1], r[2], r[3]))
    got = search_alpha_beta(zs, aff, values, labels, alphas, betas)
    assert got["ties_accuracy"] == len(tied) > 1 and got["grid_size"] == 1000
    assert (got["alpha"], got["beta"]) == (want[4], want[5])
    assert got["ties_after_loss"] == sum(1 for r in tied if abs(r[1] - want[1]) == 0.0)


def test_one_hot_cache_sum_equals_the_dense_product_and_its_gradient():
    """cache_logits sums each class's affinities when the values are one-hot: the same numbers and key
    gradients as exp(-beta (1 - f K^T)) @ L written as a dense product."""
    gen = torch.Generator().manual_seed(3)
    f = normalize(torch.randn(7, 5, generator=gen))
    keys = torch.nn.Parameter(normalize(torch.randn(9, 5, generator=gen)))
    values = F.one_hot(torch.tensor([2, 0, 1, 2, 2, 0, 1, 3, 3]), 4).float()
    got = cache_logits(f, keys, values, 2.5)
    (g1,) = torch.autograd.grad(got.square().sum(), keys)
    dense = torch.exp(-2.5 * (1 - f @ keys.t())) @ values
    (g2,) = torch.autograd.grad(dense.square().sum(), keys)
    torch.testing.assert_close(got, dense, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(g1, g2, rtol=1e-5, atol=1e-6)
    soft = values * 0.5  # not one-hot: the dense product
    torch.testing.assert_close(cache_logits(f, keys, soft, 2.5), torch.exp(-2.5 * (1 - f @ keys.t())) @ soft)
def _brute_force_search(zs, f, keys, values, labels, alphas, betas):
    """Highest accuracy, then lowest cross-entropy, then the earlier grid point (beta outer, alpha inner)."""
    best = None
    for j, b in enumerate(betas):
        for i, a in enumerate(alphas):
            logits = zs + a * torch.exp(-b * (1 - f @ keys.t())) @ values
            acc = (logits.argmax(1) == labels).double().mean().item()
            ce = F.cross_entropy(logits, labels).item()
            key = (acc, -ce, -j, -i)
            if best is None or key > best[0]:
                best = (key, a, b)
    return best[1], best[2]


def test_defaults(tiny_clip, classes):
    c = create_method("tip_adapter_f", tiny_clip, classes).config
    assert (c.init_alpha, c.init_beta, c.search, c.beta_max, c.alpha_max, c.beta_steps, c.alpha_steps, c.pre_search) == \
        (1.0, 1.0, True, 7.0, 3.0, 200, 20, False)


def test_training_defaults_and_state(tiny_clip, classes, batch):
    f_cls = create_method("tip_adapter_f", tiny_clip, classes)
    assert f_cls.train_defaults == {"optimizer": "adamw", "lr": 0.001, "weight_decay": 0.01, "batch_size": 256,
                                    "epochs": 20, "warmup_epochs": 0}
    plain = create_method("tip_adapter", tiny_clip, classes)
    assert not plain.trainable_parameters() and plain.train_defaults == {}
    assert not any(k.startswith("classifier") for k in plain.learned_state())  # recomputed from the class names
    # an unfitted (empty) cache scores exactly as zero-shot CLIP
    zs = create_method("zeroshot", tiny_clip, classes, template=plain.template).logits(batch)
    torch.testing.assert_close(plain.logits(batch), zs)


def _expected_search_6x12(tiny_clip, method, train, val):
    """The brute-force search over the 6 x 12 grid of alpha in [0.1, 3), beta in [0.1, 7) with the
    method's zero-shot classifier, the train part as cache and the val part as judge."""
    f = normalize(train.tensors["features"]).double()
    fv = normalize(val.tensors["features"]).double()
    zv = float(tiny_clip.logit_scale) * fv @ method.classifier.double().t()
    alphas = [i * (3.0 - 0.1) / 6 + 0.1 for i in range(6)]
    betas = [i * (7.0 - 0.1) / 12 + 0.1 for i in range(12)]
    return _brute_force_search(zv, fv, f, F.one_hot(train.labels, 3).double(), val.labels, alphas, betas)


def test_training_free_search_on_val_and_no_search_without_val_labels(tiny_clip, classes):
    opts = {"alpha_steps": 6, "beta_steps": 12, "init_alpha": 1.25, "init_beta": 0.75}
    train, val = _part(tiny_clip, 12, 0), _part(tiny_clip, 9, 1)
    method = create_method("tip_adapter", tiny_clip, classes, opts)
    info = method.fit_closed_form(train.tensors, val.tensors)
    expected = _expected_search_6x12(tiny_clip, method, train, val)
    assert (info["alpha"], info["beta"]) == pytest.approx(expected)
    empty = {"features": val.tensors["features"][:0], "labels": val.tensors["labels"][:0]}
    method = create_method("tip_adapter", tiny_clip, classes, opts)
    info = method.fit_closed_form(train.tensors, empty)
    assert (info["alpha"], info["beta"]) == (1.25, 0.75)
    assert (float(method.alpha), float(method.beta)) == (1.25, 0.75)


def test_tip_adapter_f_reference_order(tiny_clip, classes):
    """Fine-tuning runs with the INITIAL alpha, beta (reproduced here step by step with full-batch AdamW);
    only afterwards are alpha, beta searched on the VALIDATION part with the fine-tuned keys -- a search
    on the train part would pick other values here."""
    opts = {"init_alpha": 1.5, "init_beta": 2.0, "alpha_steps": 6, "beta_steps": 12}
    method = create_method("tip_adapter_f", tiny_clip, classes, opts)
    train, val = _part(tiny_clip, 12, 0), _part(tiny_clip, 9, 1)
    cfg = TrainConfig(epochs=6, lr=0.05, batch_size=64, optimizer="adamw", weight_decay=0.01, warmup_epochs=0,
                      scheduler="constant", progress=False)
    result = fit(method, train, val, cfg)
    assert (result.closed_form["alpha"], result.closed_form["beta"]) == (1.5, 2.0)  # no search before fine-tuning

    f = normalize(train.tensors["features"]).double()
    values = F.one_hot(train.labels, 3).double()
    zs = (float(tiny_clip.logit_scale) * f @ method.classifier.double().t())
    keys = f.clone().requires_grad_(True)
    opt = torch.optim.AdamW([keys], lr=0.05, weight_decay=0.01)
    for _ in range(6):
        logits = zs + 1.5 * torch.exp(-2.0 * (1 - f @ keys.t())) @ values
        opt.zero_grad()
        F.cross_entropy(logits, train.labels).backward()
        opt.step()
    torch.testing.assert_close(method.cache_keys.detach().double(), keys.detach(), rtol=1e-4, atol=1e-5)

    alphas = [i * (3.0 - 0.1) / 6 + 0.1 for i in range(6)]
    betas = [i * (7.0 - 0.1) / 12 + 0.1 for i in range(12)]
    fv = normalize(val.tensors["features"]).double()
    zv = float(tiny_clip.logit_scale) * fv @ method.classifier.double().t()
    k = method.cache_keys.detach().double()
    on_val = _brute_force_search(zv, fv, k, values, val.labels, alphas, betas)
    on_train = _brute_force_search(zs, f, k, values, train.labels, alphas, betas)
    assert on_val != on_train  # the data tells the two apart
    after = result.closed_form["after_fit"]
    assert (after["alpha"], after["beta"]) == pytest.approx(on_val)
    assert (float(method.alpha), float(method.beta)) == pytest.approx(on_val)


def test_pre_search_keeps_the_earlier_order(tiny_clip, classes):
    opts = {"pre_search": True, "alpha_steps": 6, "beta_steps": 12}
    method = create_method("tip_adapter_f", tiny_clip, classes, opts)
    train, val = _part(tiny_clip, 12, 0), _part(tiny_clip, 9, 1)
    info = method.fit_closed_form(train.tensors, val.tensors)
    expected = _expected_search_6x12(tiny_clip, method, train, val)
    assert (info["alpha"], info["beta"]) == pytest.approx(expected)
