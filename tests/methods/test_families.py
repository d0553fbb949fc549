"""Method families: the shared config bases check themselves and document every field; the shared
scores (scaled-cosine logits, KL distillation) are the formulas written out."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from conceptclip.errors import ConfigError
from conceptclip.methods import available_methods, build_config, get_method_class
from conceptclip.methods.coop_family import ContextConfig, ContextMethod
from conceptclip.prompts.logits import clip_logits, kl_distillation


def test_every_method_config_field_has_help_and_a_source():
    for name in available_methods():
        if name == "rctpl":  # text-only RC-TPL is documented with its own command
            continue
        for f in dataclasses.fields(get_method_class(name).Config):
            assert f.metadata.get("help"), f"{name}.{f.name}: no help"
            source = f.metadata.get("source", "")
            assert source in ("paper", "ours") or source.startswith(("paper: ", "ours: ", "code: ")), \
                f"{name}.{f.name}: source {source!r}"


def test_the_coop_family_shares_one_config_base_and_classifier():
    for name in ("coop", "cocoop", "kgcoop", "prograd", "biomedcoop"):
        cls = get_method_class(name)
        assert issubclass(cls, ContextMethod) and issubclass(cls.Config, ContextConfig), name
        fields = [f.name for f in dataclasses.fields(cls.Config)]
        assert fields[:5] == ["n_ctx", "ctx_init", "class_token_position", "class_specific", "init_std"], name
    # the paper defaults stay each method's own
    assert (get_method_class("coop").Config().n_ctx, get_method_class("coop").Config().ctx_init) == (16, "")
    for name in ("cocoop", "kgcoop", "prograd", "biomedcoop"):
        c = get_method_class(name).Config()
        assert (c.n_ctx, c.ctx_init, c.class_token_position, c.class_specific) == (4, "a photo of a", "end", False)


@pytest.mark.parametrize("name, values, message", [
    ("coop", {"n_ctx": 0}, r"^CoOpConfig\.n_ctx=0: expected a positive number of context tokens$"),
    ("coop", {"class_token_position": "left"}, r"^CoOpConfig\.class_token_position='left': expected one of"),
    ("kgcoop", {"init_std": -0.1}, r"^KgCoOpConfig\.init_std=-0\.1: expected a non-negative"),
    ("cocoop", {"class_specific": True}, r"^CoCoOpConfig\.class_specific=True: expected false"),
    ("biomedcoop", {"selection": "image"}, r"^BiomedCoOpConfig\.selection='image': expected one of"),
    ("ecor", {"decision": "mean"}, r"^EcorConfig\.decision='mean': expected one of"),
    ("dror", {"top_k": 0}, r"^DrorConfig\.top_k=0: expected a positive integer$"),
    ("deal", {"map_norm": "max"}, r"^deal map_norm='max': expected one of"),
    ("xcoop", {"tau": 0.0}, r"^xcoop tau=0\.0: expected a positive temperature$"),
])
def test_configs_validate_themselves_with_one_line_errors(name, values, message):
    with pytest.raises(ConfigError, match=message):
        build_config(get_method_class(name).Config, values)


def test_words_make_n_ctx_irrelevant():
    c = build_config(get_method_class("coop").Config, {"n_ctx": 0, "ctx_init": "a photo of a"})
    assert c.n_ctx == 0 and c.ctx_init == "a photo of a"


def test_clip_logits_is_the_scaled_cosine():
    image = [[3.0, 4.0, 0.0], [1.0, -2.0, 2.0]]
    text = [[1.0, 0.0, 0.0], [0.0, 0.6, 0.8]]  # unit rows
    got = clip_logits(torch.tensor(image), torch.tensor(text), 10.0)
    for b, f in enumerate(image):
        norm = math.sqrt(sum(v * v for v in f))
        for c, t in enumerate(text):
            assert math.isclose(float(got[b, c]), 10.0 * sum(x * y for x, y in zip(f, t)) / norm, rel_tol=1e-6)
    unit = torch.nn.functional.normalize(torch.tensor(image), dim=-1)
    assert torch.equal(clip_logits(unit, torch.tensor(text), 10.0, normalized=True), got)


def test_kl_distillation_is_t_squared_kl_of_the_teacher_to_the_student():
    student, teacher = [[1.0, 2.0, 0.5], [0.0, -1.0, 1.0]], [[2.0, 0.0, 1.0], [1.0, 1.0, -1.0]]

    def softmax(z, t):
        e = [math.exp(v / t) for v in z]
        return [v / sum(e) for v in e]

    for t in (1.0, 2.0):
        total = sum(p * math.log(p / q) for zs, zt in zip(student, teacher)
                    for p, q in zip(softmax(zt, t), softmax(zs, t)))
        s, te = torch.tensor(student), torch.tensor(teacher)
        assert math.isclose(float(kl_distillation(s, te, t)), t * t * total / 2, rel_tol=1e-5)
        assert math.isclose(float(kl_distillation(s, te, t, "numel")), t * t * total / 6, rel_tol=1e-5)
    with pytest.raises(ConfigError, match="reduction='mean'"):
        kl_distillation(torch.tensor(student), torch.tensor(teacher), reduction="mean")
