"""The RC-TPL method on tiny-clip: paper defaults, Eqs. (1)-(5) recomputed from the prompt
features, gradients only into the two prompts, transfer of the learned prompts to new classes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conceptclip.errors import ConfigError
from conceptclip.methods import available_methods, create_method
from conceptclip.rctpl.method import ranking_loss
from conceptclip.prompts.local import softmax_pool

CLASSES = ["effusion", "cardiomegaly", "opacity"]


@pytest.fixture
def method(tiny_clip):
    torch.manual_seed(0)
    return create_method("rctpl", tiny_clip, CLASSES)


@pytest.fixture
def batch(tiny_clip):
    g = torch.Generator().manual_seed(1)
    d = tiny_clip.embed_dim
    return {"features": torch.randn(4, d, generator=g), "patches": torch.randn(4, 5, d, generator=g),
            "patch_mask": torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0]]).bool(),
            "labels": torch.tensor([[1.0, 0, 0], [0, 1, 1], [0, 0, 0], [1, 0, 1]]),
            "label_mask": torch.tensor([[1, 1, 1], [1, 1, 1], [1, 1, 1], [1, 0, 1]]).bool()}


def test_registered_with_paper_defaults(method):
    assert "rctpl" in available_methods()
    c = method.config
    assert (c.n_ctx, c.init_std, c.alpha) == (12, 0.02, 0.5)
    assert method.train_defaults["optimizer"] == "adamw"
    assert (method.train_defaults["lr"], method.train_defaults["batch_size"], method.train_defaults["epochs"]) == (2e-5, 64, 20)
    assert method.inputs == frozenset({"features", "patches"}) and method.multilabel
    for prompt in (method.report_prompt, method.concept_prompt):
        assert prompt.ctx.shape == (12, method.backbone.text_width)  # one shared context, M = 12
        ctx = prompt.ctx.detach()
        assert 0.015 < float(ctx.std()) < 0.025 and abs(float(ctx.mean())) < 0.005  # N(0, 0.02^2)
    assert not torch.equal(method.report_prompt.ctx, method.concept_prompt.ctx)  # two separate prompts


def test_logits_and_loss_follow_the_equations(method, batch, tiny_clip):
    scale = tiny_clip.logit_scale
    t_r = F.normalize(method.report_prompt(), dim=-1)
    t_c = F.normalize(method.concept_prompt(), dim=-1)
    s_g = scale * F.normalize(batch["features"], dim=-1) @ t_r.t()  # Eq. (1)
    cos = F.normalize(batch["patches"], dim=-1) @ t_c.t()  # (B, N, C)
    s_l = torch.zeros(4, 3)
    for i in range(4):  # Eq. (2) by hand over the real regions only
        real = cos[i, batch["patch_mask"][i]]
        w = torch.softmax(real / 0.1, dim=0)
        s_l[i] = scale * (w * real).sum(0)
    torch.testing.assert_close(scale * softmax_pool(cos, 0.1, batch["patch_mask"]), s_l)
    torch.testing.assert_close(method.logits(batch), 0.5 * s_g + 0.5 * s_l, rtol=1e-5, atol=1e-5)  # Eq. (5)
    terms = method.loss(batch)
    expected = ranking_loss(s_g, batch["labels"], batch["label_mask"]) + ranking_loss(s_l, batch["labels"], batch["label_mask"])
    torch.testing.assert_close(terms["loss"], expected, rtol=1e-5, atol=1e-5)  # Eq. (4)
    torch.testing.assert_close(terms["rank_report"] + terms["rank_concept"], expected.detach(), rtol=1e-5, atol=1e-5)


def test_gradients_reach_only_the_prompts(method, batch):
    method.loss(batch)["loss"].backward()
    assert method.report_prompt.ctx.grad.abs().sum() > 0
    assert method.concept_prompt.ctx.grad.abs().sum() > 0
    assert all(p.grad is None for p in method.backbone.parameters())
    assert {n for n, p in method.named_parameters() if p.requires_grad} == {"report_prompt.ctx", "concept_prompt.ctx"}
    assert set(method.learned_state()) == {"report_prompt.ctx", "concept_prompt.ctx"}


def test_global_only_without_regions_or_local_branch(tiny_clip, batch):
    torch.manual_seed(0)
    m = create_method("rctpl", tiny_clip, CLASSES, {"local": False})
    s_g = tiny_clip.logit_scale * F.normalize(batch["features"], dim=-1) @ F.normalize(m.report_prompt(), dim=-1).t()
    torch.testing.assert_close(m.logits(batch), s_g, rtol=1e-5, atol=1e-5)
    assert set(m.loss(batch)) == {"loss", "rank_report"}
    assert not m.concept_prompt.ctx.requires_grad
    full = create_method("rctpl", tiny_clip, CLASSES)
    no_patches = {"features": batch["features"]}
    torch.testing.assert_close(full.logits(no_patches), full.branch_scores(no_patches)[0])


def test_learned_prompts_transfer_to_other_classes(method, batch, tiny_clip):
    with torch.no_grad():
        method.report_prompt.ctx.add_(0.5)
    other = create_method("rctpl", tiny_clip, ["pneumonia", "normal"], multilabel=False)
    other.load_learned_state(method.learned_state())
    assert torch.equal(other.report_prompt.ctx, method.report_prompt.ctx)
    assert other.logits(batch).shape == (4, 2)
    torch.testing.assert_close(other.probabilities(other.logits(batch)).sum(1), torch.ones(4))  # single-label: softmax


def test_config_errors(tiny_clip):
    for bad, match in (({"tau_c": 0.0}, "tau_c"), ({"alpha": 1.5}, "alpha"), ({"margin": -1.0}, "margin"),
                       ({"n_ctx": "twelve"}, "number"), ({"topk": 3}, "unknown")):
        with pytest.raises(ConfigError, match=match):
            create_method("rctpl", tiny_clip, CLASSES, bad)


def test_single_label_targets_are_refused(method, batch):
    with pytest.raises(ConfigError, match="multi-hot"):
        method.loss({**batch, "labels": torch.tensor([0, 1, 2, 0])})
