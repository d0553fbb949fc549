"""Every method trains exactly its own parameters: after one loss/backward step the parameters the
paper learns have (non-zero) gradients and the frozen backbone has none."""

from __future__ import annotations

import pytest
import torch

from conceptclip.methods import create_method

META = {f"meta_net.linear{i}.{w}" for i in (1, 2) for w in ("weight", "bias")}
EXPECTED = {
    "coop": {"prompt.ctx"},
    "cocoop": {"prompt.ctx", *META},
    "kgcoop": {"prompt.ctx"},
    "prograd": {"prompt.ctx"},
    "biomedcoop": {"prompt.ctx"},
    "clip_adapter": {"adapter.fc1.weight", "adapter.fc2.weight"},
    "tip_adapter_f": {"cache_keys"},
    "tip_adapter": set(),
    "lp_pp": set(),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_only_the_methods_parameters_get_gradients(name, tiny_clip, classes, batch):
    method = create_method(name, tiny_clip, classes)
    method.fit_closed_form(batch, batch)
    trainable = {n for n, p in method.named_parameters() if p.requires_grad}
    assert trainable == EXPECTED[name]
    assert method.describe()["trainable_parameters"] == sum(p.numel() for p in method.trainable_parameters())
    if not trainable:
        return
    method.zero_grad(set_to_none=True)
    terms = method.loss(batch)
    assert set(terms) >= {"loss"}
    method.backward(terms, lambda t: t.backward())
    for n, p in method.named_parameters():
        if n in trainable:
            assert p.grad is not None and float(p.grad.abs().sum()) > 0, n
        else:
            assert p.grad is None, f"frozen parameter {n} received a gradient"
    method.zero_grad(set_to_none=True)


@pytest.mark.parametrize("name", ["cocoop", "kgcoop", "prograd", "biomedcoop", "clip_adapter"])
def test_learned_state_excludes_backbone_and_fixed_class_features(name, tiny_clip, classes):
    state = create_method(name, tiny_clip, classes).learned_state()
    assert state and not any(k.startswith("backbone.") for k in state)
    # fixed hand-crafted / ensemble features are recomputed from the class names, never checkpointed,
    # so a novel-class head never inherits base-class text features
    assert not any(k in ("handcrafted", "classifier", "text") for k in state)
