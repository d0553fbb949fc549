"""Saliency sanity checks (Adebayo et al. 2018): learned-parameter randomisation and the pass/fail rule."""

from __future__ import annotations

import math

import pytest
import torch

from conceptclip.errors import ConfigError
from conceptclip.explain.sanity import (
    SANITY_THRESHOLD,
    SanityCheck,
    learned_tensor_names,
    randomize_learned,
    sanity_check,
)


def test_randomize_learned_redraws_only_the_learned_tensors(tiny_coop):
    before = {k: v.clone() for k, v in tiny_coop.state_dict().items()}
    twin = randomize_learned(tiny_coop, seed=3)
    assert twin.backbone is tiny_coop.backbone  # the frozen encoder is shared, not copied
    for k, v in tiny_coop.state_dict().items():
        assert torch.equal(v, before[k])  # the trained method is untouched
    learned = learned_tensor_names(tiny_coop)
    assert learned == ["prompt.ctx"]  # token ids are not learned
    assert learned
    for k in learned:
        new, old = twin.state_dict()[k], before[k]
        assert not torch.allclose(new, old)
        if old.numel() > 50:  # the scale is kept: same mean and spread, other values
            assert float(new.std()) == pytest.approx(float(old.std()), rel=0.3)
    # same seed, same draw
    again = randomize_learned(tiny_coop, seed=3)
    assert all(torch.equal(again.state_dict()[k], twin.state_dict()[k]) for k in learned)


def test_randomize_refuses_a_method_that_learned_nothing(tiny_clip):
    from conceptclip.methods import create_method

    zs = create_method("zeroshot", tiny_clip, ["a", "b"])
    with pytest.raises(ConfigError, match="no learned parameters"):
        randomize_learned(zs)


def _stub_maps(trained_maps, twin_maps, method_obj):
    def fn(method, pixels, explainer, classes):
        return trained_maps if method is method_obj else twin_maps
    return fn


def test_identical_maps_fail_and_independent_maps_pass(tiny_coop, pixels):
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(4, 7, 7, generator=g)
    other = torch.rand(4, 7, 7, generator=g)
    twin = object()
    classes = torch.zeros(4, dtype=torch.long)
    same, per = sanity_check(tiny_coop, twin, pixels, "gradcam", "parameter_randomisation", classes,
                             map_fn=_stub_maps(maps, maps.clone(), tiny_coop))
    assert same.spearman == pytest.approx(1.0) and same.ssim == pytest.approx(1.0)
    assert not same.passed and "FAIL" in same.message()
    diff, per = sanity_check(tiny_coop, twin, pixels, "gradcam", "data_randomisation", classes,
                             map_fn=_stub_maps(maps, other, tiny_coop))
    assert per["spearman"].shape == (4,)
    assert diff.spearman < SANITY_THRESHOLD and diff.passed and "pass" in diff.message()
    # reversed maps are as informative as a change can be: strongly negative correlation passes
    rev, _ = sanity_check(tiny_coop, twin, pixels, "similarity", "parameter_randomisation", classes,
                          map_fn=_stub_maps(maps, -maps, tiny_coop))
    assert rev.spearman == pytest.approx(-1.0) and rev.passed


def test_constant_maps_are_not_applicable():
    c = SanityCheck("parameter_randomisation", "gradcam", math.nan, math.nan, 2)
    assert not c.applicable and not c.passed and "could not be checked" in c.message()
    assert c.to_dict()["passed"] is False


def test_similarity_maps_of_a_randomised_prompt_change(tiny_coop, pixels):
    """End to end on tiny-clip: CoOp's similarity maps against a copy with itself (fails: identical)
    and against a randomised twin (maps change: lower correlation)."""
    import copy

    ident = copy.deepcopy(tiny_coop)
    same, _ = sanity_check(tiny_coop, ident, pixels, "similarity", "parameter_randomisation")
    assert same.spearman == pytest.approx(1.0, abs=1e-9) and not same.passed
    rand, _ = sanity_check(tiny_coop, randomize_learned(tiny_coop, seed=1), pixels, "similarity",
                           "parameter_randomisation")
    assert rand.spearman < 0.999
    with pytest.raises(ConfigError, match="sanity test"):
        sanity_check(tiny_coop, ident, pixels, "similarity", "label_shuffle")


def test_baseline_maps_random_on_the_grid_and_the_centre_prior():
    from conceptclip.explain import baseline_maps, random_maps

    b = baseline_maps(3, (7, 7), 28, seed=5)
    assert set(b) == {"random", "centre"} and b["random"].shape == b["centre"].shape == (3, 28, 28)
    # random maps are drawn on the explainer's grid, then upsampled like the explanations
    coarse = torch.nn.functional.interpolate(random_maps(3, (7, 7), seed=5)[:, None], size=(28, 28),
                                             mode="bilinear", align_corners=False)[:, 0]
    assert torch.allclose(b["random"], coarse)
    centre = b["centre"][0]
    peak = divmod(int(centre.argmax()), 28)
    assert peak in {(13, 13), (13, 14), (14, 13), (14, 14)}  # the centre pixel(s) of an even side
