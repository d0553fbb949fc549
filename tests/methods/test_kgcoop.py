"""KgCoOp: L = L_ce + lambda L_kg with the reference code's L_kg = 1 - mean_i cos(w_i, w_i^clip) and
lambda = 8 (htyao89/KgCoOp, trainers/kgcoop.py, scripts/run.sh); Eq. 6's squared distance as an option.
Expected values are computed here with plain Python."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from conceptclip.errors import ConfigError
from conceptclip.methods import create_method
from conceptclip.methods.kgcoop import kg_loss
from conceptclip.prompts import class_text_features


def _cos(a, b) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def test_kg_loss_hand_computed():
    learned = [[1.0, 0.0], [0.0, 1.0], [0.8, -0.6]]
    handcrafted = [[0.6, 0.8], [0.0, 1.0], [0.0, 1.0]]
    cosine = 1 - sum(_cos(a, b) for a, b in zip(learned, handcrafted)) / 3  # 1 - (0.6 + 1 - 0.6) / 3
    squared = sum(sum((x - y) ** 2 for x, y in zip(a, b)) for a, b in zip(learned, handcrafted)) / 3
    assert abs(float(kg_loss(torch.tensor(learned), torch.tensor(handcrafted))) - cosine) < 1e-7
    assert abs(float(kg_loss(torch.tensor(learned), torch.tensor(handcrafted), "squared")) - squared) < 1e-6
    assert abs(squared - 2 * cosine) < 1e-9  # unit vectors: Eq. 6 is twice the reference code's term


def test_default_lambda_form_and_handcrafted_prompt(tiny_clip, classes):
    method = create_method("kgcoop", tiny_clip, classes, template="a photo of a {}.")
    assert (method.config.lam, method.config.kg_form) == (8.0, "cosine")
    assert (method.config.n_ctx, method.config.ctx_init) == (4, "a photo of a")  # the paper's M = 4
    assert not any(k.startswith("handcrafted") for k in method.learned_state())  # recomputed, never checkpointed
    rand = create_method("kgcoop", tiny_clip, classes, {"ctx_init": ""}).prompt.ctx
    assert 0.014 < float(rand.std()) < 0.027  # N(0, 0.02^2) when no init phrase
    torch.testing.assert_close(method.handcrafted, class_text_features(tiny_clip, classes, ["a photo of a {}."]))
    with pytest.raises(ConfigError, match="kg_form"):
        create_method("kgcoop", tiny_clip, classes, {"kg_form": "l2"})


def test_context_initialised_as_the_handcrafted_prompt_has_zero_kg_term(tiny_clip, classes, batch):
    method = create_method("kgcoop", tiny_clip, classes, template="a photo of a {}.")
    terms = method.loss(batch)
    assert float(terms["kg"]) < 1e-6


@pytest.mark.parametrize("form", ["cosine", "squared"])
def test_total_loss_is_ce_plus_eight_times_kg(tiny_clip, classes, batch, form):
    method = create_method("kgcoop", tiny_clip, classes, {"kg_form": form}, template="a photo of a {}.")
    with torch.no_grad():
        method.prompt.ctx.add_(torch.randn(method.prompt.ctx.shape, generator=torch.Generator().manual_seed(3)))
    terms = method.loss(batch)
    text = F.normalize(method.prompt(), dim=-1).detach().tolist()
    hand = method.handcrafted.tolist()
    if form == "cosine":
        kg = 1 - sum(_cos(a, b) for a, b in zip(text, hand)) / len(text)
    else:
        kg = sum(sum((x - y) ** 2 for x, y in zip(a, b)) for a, b in zip(text, hand)) / len(text)
    scale = float(tiny_clip.logit_scale)
    img = F.normalize(batch["features"], dim=-1).tolist()
    ce = 0.0
    for f, y in zip(img, batch["labels"].tolist()):
        row = [scale * sum(a * b for a, b in zip(f, t)) for t in text]
        m = max(row)
        ce += -(row[y] - m - math.log(sum(math.exp(v - m) for v in row)))
    ce /= len(img)
    assert kg > 1e-3
    assert abs(float(terms["kg"]) - kg) < 1e-6
    assert abs(terms["loss"].item() - (ce + 8.0 * kg)) < 1e-4
