"""ECOR and the DROR-style baseline as methods: visual prompt tuning end to end on tiny-clip, the
ablation switches, losses through the method on hand-made logits, explanations, errors, and the
lite feature-space prompt."""

from __future__ import annotations

import math

import pytest
import torch

from conceptclip.errors import ConfigError
from conceptclip.knowledge.schema import Provenance, simple_bank
from conceptclip.methods import create_method
from conceptclip.methods.ecor import ABLATIONS, VARIANTS

from torch_threads import single_thread

PROV = Provenance(kind="paper", citation="hand-made test bank")
# this project's former reading of Eq. 5 (now the named options): bank pairs, softmax within R
FORMER = {"pairs": "bank", "conditional_softmax": "grouped"}
CLASSES = ["melanoma", "nevus"]
# example A of test_ecor_math: class 0 -> {r0, r1}, class 1 -> {r1, r2}
BANK_A = simple_bank("a", {"melanoma": ["blue veil", "irregular dots"], "nevus": ["irregular dots", "regular network"]},
                     PROV)
BANK = simple_bank("toy", {"melanoma": ["blue veil", "irregular streaks", "irregular dots"],
                           "nevus": ["regular network", "regular dots", "irregular dots"]}, PROV)


_one_thread = pytest.fixture(scope="module", autouse=True)(single_thread)


def pixel_batch(n: int = 12, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    truth = torch.zeros(n, 5)
    truth[labels == 0, 0] = 1  # melanomas show "blue veil"
    truth[labels == 1, 3] = 1  # nevi show "regular network"
    truth[::3, 2] = 1  # every third image also "irregular dots"
    # learnable signal: melanomas brighter in the red channel, nevi in the blue one
    pixels = torch.randn(n, 3, 32, 32, generator=gen)
    pixels[labels == 0, 0] += 3.0
    pixels[labels == 1, 2] += 3.0
    return {"pixels": pixels, "labels": labels, "index": torch.arange(n), "rationales": truth}


def test_deep_vpt_trains_end_to_end_and_only_prompts_learn(tiny_clip):
    torch.manual_seed(0)
    m = create_method("ecor", tiny_clip, CLASSES, {"visual_prompt": "deep", "n_prompt_tokens": 4}, bank=BANK)
    assert m.pair_text.shape[0] == 10  # every class x rationale pair
    assert m.inputs == frozenset({"pixels"}) and m.visual.kind == "deep"
    assert tuple(m.visual.tokens.shape) == (2, 4, 32)  # one block of 4 tokens per layer of the 2-layer ViT
    batch = pixel_batch()
    terms = m.loss(batch)
    terms["loss"].backward()
    with_grad = {n for n, p in m.named_parameters() if p.grad is not None}
    assert with_grad == {"visual.tokens"}
    assert all(p.grad is None and not p.requires_grad for p in tiny_clip.parameters())
    assert bool((m.visual.tokens.grad.abs().sum(dim=(1, 2)) > 0).all())  # every layer's prompt gets gradient
    m.zero_grad()

    text_before = (m.rationale_text.clone(), m.pair_text.clone())
    tokens_before = m.visual.tokens.detach().clone()
    opt = torch.optim.AdamW(m.trainable_parameters(), lr=m.train_defaults["lr"], weight_decay=0.0)
    losses = []
    for _ in range(15):
        terms = m.loss(batch)
        losses.append(terms["loss"].item())
        opt.zero_grad()
        terms["loss"].backward()
        opt.step()
    # a random tiny ViT separates the images only weakly: the loss falls by about a tenth, steadily
    assert losses[-1] < 0.92 * losses[0] and all(a > b for a, b in zip(losses[:6], losses[1:6])), losses
    assert {"l_r", "l_c"} <= set(terms)
    assert bool((m.visual.tokens.detach() - tokens_before).abs().sum(dim=(1, 2)).gt(0).all())
    torch.testing.assert_close(m.rationale_text, text_before[0])  # the text side stays frozen
    torch.testing.assert_close(m.pair_text, text_before[1])
    assert set(m.learned_state()) == {"visual.tokens"}


def test_shallow_vpt_state_round_trip_and_explanations(tiny_clip):
    m = create_method("ecor", tiny_clip, CLASSES, {"visual_prompt": "shallow", "n_prompt_tokens": 3}, bank=BANK)
    assert tuple(m.visual.tokens.shape) == (1, 3, 32)
    b = pixel_batch(4)
    with torch.no_grad():
        m.visual.tokens.add_(0.3)
    other = create_method("ecor", tiny_clip, CLASSES, {"visual_prompt": "shallow", "n_prompt_tokens": 3}, bank=BANK)
    other.load_learned_state(m.learned_state())
    torch.testing.assert_close(other.logits(b), m.logits(b))
    out = m.explain(b)
    assert out["rationales"].shape == (4, 5) and bool((out["rationales"].sum(1) == 1).all())
    assert out["rationale_map"].shape == (4, 4, 4)  # 32 px / patch 8: a 4 x 4 grid
    assert m.rationale_maps(b).shape == (4, 5, 4, 4)
    for phrases in out["rationale_phrases"]:
        assert phrases[0] in m.space.vocab  # pairs="all": any rationale may support a class
    probs = m.concept_scores(b)
    torch.testing.assert_close(probs.sum(1), torch.ones(4))
    bank_pairs = create_method("ecor", tiny_clip, CLASSES, {"visual_prompt": "shallow", **FORMER}, bank=BANK)
    out = bank_pairs.explain(b)
    for cls, phrases in zip(out["pred"].tolist(), out["rationale_phrases"]):
        assert phrases[0] in BANK.phrases(CLASSES[cls])  # with bank pairs: a rationale of the predicted class


def test_logits_argmax_is_the_voted_category(tiny_clip):
    m = create_method("ecor", tiny_clip, CLASSES, {"visual_prompt": "none", "top_k": 3}, bank=BANK)
    b = {"features": torch.randn(16, tiny_clip.embed_dim, generator=torch.Generator().manual_seed(1))}
    out = m.predict_rationales(b)
    assert torch.equal(m.logits(b).argmax(1), out["pred"])
    marg = create_method("ecor", tiny_clip, CLASSES, {"visual_prompt": "none", "ablation": "marginal", **FORMER},
                         bank=BANK)
    torch.testing.assert_close(marg.logits(b).exp().sum(1), torch.ones(16))  # log P(c | I) sums to one


def _hand_logits(method, rationale_logits, pair_logits):
    method.similarities = lambda f: {"rationale_logits": rationale_logits.expand(f.shape[0], -1),
                                     "pair_logits": pair_logits.expand(f.shape[0], -1)}
    return method


def test_ecor_loss_through_the_method_on_hand_logits(tiny_clip):
    """The former reading (FORMER), example A: label 1 (nevus) showing only "irregular dots" (r1):
    L = log 3 + log 4/3 = log 4."""
    m = create_method("ecor", tiny_clip, CLASSES, {"visual_prompt": "none", "top_k": 1, **FORMER}, bank=BANK_A)
    assert m.pair_class.tolist() == [0, 0, 1, 1] and m.pair_set.tolist() == [0, 1, 1, 2]
    _hand_logits(m, torch.log(torch.tensor([[1.0, 2.0, 3.0]])), torch.tensor([[5.0, 0.0, math.log(3.0), -2.0]]))
    batch = {"features": torch.randn(1, tiny_clip.embed_dim), "labels": torch.tensor([1]),
             "rationales": torch.tensor([[0.0, 1.0, 0.0]])}
    terms = m.loss(batch)
    assert float(terms["loss"]) == pytest.approx(math.log(4.0))
    assert float(terms["l_r"]) == pytest.approx(math.log(3.0)) and float(terms["l_c"]) == pytest.approx(math.log(4 / 3))
    out = m.predict_rationales(batch)
    assert out["pred"].tolist() == [1] and out["rationale_set"].tolist() == [2]
    torch.testing.assert_close(out["log_joint"].exp(), torch.tensor([[1 / 6, 1 / 12, 1 / 4, 1 / 2]]))
    # without per-image truth the true class's bank rationales {r1, r2} count:
    # L_R = -(log 2/6 + log 3/6)/2, L_C = -(log 3/4 + log 1)/2
    terms = m.loss({k: v for k, v in batch.items() if k != "rationales"})
    expected = -(math.log(2 / 6) + math.log(3 / 6)) / 2 - math.log(0.75) / 2
    assert float(terms["loss"]) == pytest.approx(expected)


def test_dror_loss_and_decision_on_hand_logits(tiny_clip):
    d = create_method("dror", tiny_clip, CLASSES, {"visual_prompt": "none", "pairs": "bank"}, bank=BANK_A)
    assert d.config.top_k == 1
    _hand_logits(d, torch.zeros(1, 3), torch.log(torch.tensor([[1.0, 2.0, 3.0, 4.0]])))
    batch = {"features": torch.randn(1, tiny_clip.embed_dim), "labels": torch.tensor([1]),
             "rationales": torch.tensor([[0.0, 1.0, 0.0]])}
    assert float(d.loss(batch)["loss"]) == pytest.approx(-math.log(0.3))
    out = d.predict_rationales(batch)
    assert out["pred"].tolist() == [1] and out["rationale_set"].tolist() == [2]


def test_dror_trains_with_a_shallow_prompt(tiny_clip):
    torch.manual_seed(0)
    d = create_method("dror", tiny_clip, CLASSES, {"visual_prompt": "shallow", "n_prompt_tokens": 4}, bank=BANK)
    opt = torch.optim.AdamW(d.trainable_parameters(), lr=0.05)
    b = pixel_batch()
    first = None
    for _ in range(20):
        loss = d.loss(b)["loss"]
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert d.loss(b)["loss"].item() < first


def test_table_iv_ablations_and_our_variants_switch_what_they_say(tiny_clip):
    table_iv = {"AB1": {"train_on": "rationales"}, "AB2": {"model": "independent", "train_on": "categories"},
                "AB3": {"model": "conditional"},
                "AB4": {"category_template": "There is {rationale} because this is a photo of a {classname}."},
                "AB5": {"model": "independent"}, "AB6": {"model": "inverse"}}
    ours = {"uniform_rationale_prior": {"use_rationale_prior": False},
            "class_prompt_conditional": {"condition_on_rationale": False}, "top1": {"top_k": 1},
            "marginal": {"decision": "marginal"}, "frozen": {"visual_prompt": "none"},
            "class_truth": {"rationale_truth": "class"}}
    assert {k: v[0] for k, v in ABLATIONS.items()} == table_iv and {k: v[0] for k, v in VARIANTS.items()} == ours
    b = pixel_batch(4)
    terms = {"AB1": {"l_r"}, "AB2": {"l_class"}, "AB3": {"l_c"}, "AB4": {"l_r", "l_c"}, "AB5": {"l_r", "l_class"},
             "AB6": {"l_class", "l_rc"}, "uniform_rationale_prior": {"l_c"}}
    for name, switches in {**table_iv, **ours}.items():
        m = create_method("ecor", tiny_clip, CLASSES, {"ablation": name, "n_prompt_tokens": 2}, bank=BANK)
        assert all(getattr(m.config, k) == v for k, v in switches.items()), name
        assert m.describe()["ablation"]["name"] == name
        assert m.logits(b).shape == (4, 2)
        assert set(m.loss(b)) - {"loss"} == terms.get(name, {"l_r", "l_c"}), name
    frozen = create_method("ecor", tiny_clip, CLASSES, {"ablation": "frozen"}, bank=BANK)
    assert frozen.trainable_parameters() == [] and frozen.inputs == frozenset({"features"})
    # class_prompt_conditional: P(c | R, I) comes from the class prompts, identical for every R
    cp = create_method("ecor", tiny_clip, CLASSES, {"ablation": "class_prompt_conditional", "visual_prompt": "none"},
                       bank=BANK)
    f = torch.randn(3, tiny_clip.embed_dim)
    pl = cp.similarities(f)["pair_logits"]
    cls = torch.nn.functional.normalize(f, dim=-1) @ cp.class_text.t() * tiny_clip.logit_scale
    torch.testing.assert_close(pl, cls[:, cp.pair_class])
    # class_truth: the batch's per-image rationales are ignored in favour of the class's bank list
    ct = create_method("ecor", tiny_clip, CLASSES, {"ablation": "class_truth", "n_prompt_tokens": 2}, bank=BANK)
    assert torch.equal(ct.rationale_targets(b), ct.class_truth[b["labels"]])
    # an explicit switch next to a preset: the preset wins over the fields it sets
    m = create_method("ecor", tiny_clip, CLASSES, {"ablation": "AB5", "model": "ecor", "visual_prompt": "none"}, bank=BANK)
    assert m.config.model == "independent"


def test_only_trainable_parameters_get_gradients_in_every_ablation(tiny_clip):
    b = pixel_batch(4)
    for name in list(ABLATIONS) + ["class_prompt_conditional", "uniform_rationale_prior"]:
        m = create_method("ecor", tiny_clip, CLASSES, {"ablation": name}, bank=BANK)
        m.loss(b)["loss"].backward()
        assert {n for n, p in m.named_parameters() if p.grad is not None} == {"visual.tokens"}, name
        assert all(p.grad is None for p in tiny_clip.parameters()), name
        assert float(m.visual.tokens.grad.abs().sum()) > 0, name


def test_bank_from_config_and_clear_errors(tiny_clip, tmp_path):
    from conceptclip.knowledge.schema import save_bank

    path = save_bank(BANK, tmp_path / "bank.json")
    m = create_method("ecor", tiny_clip, CLASSES, {"bank": str(path), "visual_prompt": "none"})
    assert m.describe()["rationale_space"]["pairs"] == 10
    # no default bank (issue 19): the error names the option, for ECOR and DROR alike
    for name in ("ecor", "dror"):
        with pytest.raises(ConfigError, match=rf"^{name}: option 'bank' is required \(there is no default bank\)"):
            create_method(name, tiny_clip, ["circle", "square"], {})
    for key, value in (("model", "joint"), ("train_on", "all"), ("conditional_softmax", "pairs"),
                       ("decision", "mean"), ("rationale_truth", "both"), ("top_k", 0)):
        with pytest.raises(ConfigError, match=f"{key}={value!r}"):
            create_method("ecor", tiny_clip, CLASSES, {key: value}, bank=BANK)
    with pytest.raises(ConfigError, match="ablation='AB9'"):
        create_method("ecor", tiny_clip, CLASSES, {"ablation": "AB9"}, bank=BANK)
    with pytest.raises(ConfigError, match="category_template"):
        create_method("ecor", tiny_clip, CLASSES, {"category_template": "a {classname} photo."}, bank=BANK)
    with pytest.raises(ConfigError, match="visual_prompt='huge'"):
        create_method("dror", tiny_clip, CLASSES, {"visual_prompt": "huge"}, bank=BANK)
    m = create_method("ecor", tiny_clip, CLASSES, {"visual_prompt": "none"}, bank=BANK)
    with pytest.raises(ConfigError, match=r"expected \(B, 5\) multi-hot"):
        m.loss({"features": torch.randn(2, 16), "labels": torch.tensor([0, 1]), "rationales": torch.ones(2, 3)})


@pytest.mark.shared_data
def test_the_ph2_bank_on_foreign_classes_is_refused(tiny_clip):
    """Issue 19: never PH2's criteria on another dataset's classes."""
    with pytest.raises(ConfigError, match=r"rationale bank 'ph2' has no rationales for class\(es\) \['circle', 'square'\]"):
        create_method("ecor", tiny_clip, ["circle", "square"], {"bank": "ph2"})


def test_pixel_prompt_touches_only_the_frame(tiny_clip):
    m = create_method("ecor", tiny_clip, CLASSES, {"visual_prompt": "pixel", "prompt_pad": 4}, bank=BANK)
    m.loss(pixel_batch(4))["loss"].backward()
    g = m.visual.prompt.grad[0, 0]
    assert float(g[4:28, 4:28].abs().sum()) == 0.0 and float(g[:4].abs().sum()) > 0
    # the default frame: 30 px at 224 px, i.e. 4 px on tiny-clip's 32-px images
    d = create_method("ecor", tiny_clip, CLASSES, {"visual_prompt": "pixel"}, bank=BANK)
    assert int(d.visual.mask[0, 0, 0].sum()) == 32 and int(d.visual.mask[0, 0, 16].sum()) == 8


# -- lite: a convolutional tower -------------------------------------------------------


@pytest.fixture(scope="module")
def lite_pixels() -> torch.Tensor:
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))


def test_deep_prompts_need_a_vit(lite, lite_pixels):
    with pytest.raises(ConfigError, match=r"deep VPT\) needs a ViT image tower .*'lite' is convolutional"):
        create_method("ecor", lite, CLASSES, {"visual_prompt": "deep"}, bank=BANK)
    # the default shallow prompt on lite: the feature-space prompt at the head conv (320 x 7 x 7)
    m = create_method("ecor", lite, CLASSES, {}, bank=BANK)
    assert m.visual.kind == "shallow" and tuple(m.visual.prompt.shape) == (320, 7, 7)
    # explanations from cached tower prefixes (no "pixels") still carry the rationale map
    out = m.explain({"tower_prefix": m.visual.prefix(lite_pixels)})
    assert out["rationale_map"].shape == (2, 7, 7)


def test_lite_feature_prompt_starts_at_the_frozen_tower(lite, lite_pixels):
    from conceptclip.prompts.visual_prompts import build_visual_prompt

    p = build_visual_prompt(lite, "auto")
    assert p.kind == "shallow" and tuple(p.prompt.shape) == (320, 7, 7)
    with torch.no_grad():
        ref = lite.encode_image(lite_pixels, patches=True)
        got = p.encode({"pixels": lite_pixels}, patches=True)
        cached = p.encode({"tower_prefix": p.prefix(lite_pixels)})
    torch.testing.assert_close(got.global_, ref.global_, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.patches, ref.patches, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cached.global_, ref.global_, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        p.prompt.fill_(0.5)
    out = p.encode({"tower_prefix": p.prefix(lite_pixels)}).global_
    assert not torch.allclose(out, ref.global_, atol=1e-3)
    out.sum().backward()
    assert p.prompt.grad is not None and all(q.grad is None for q in lite.parameters())


@pytest.mark.slow
def test_engine_run_and_reload_from_the_results_folder(image_folder, tiny_clip, tmp_path):
    """`run_experiment` trains ECOR on pixels (shallow VPT on tiny-clip); `load_run` rebuilds it from
    config.json alone (the bank travels as a file path) and reproduces the saved predictions."""
    import json

    from conceptclip.data import FeatureCache, fewshot_split, holdout_split
    from conceptclip.data.dataset import from_folder
    from conceptclip.engine import predict, run_experiment
    from conceptclip.engine.data import build_part
    from conceptclip.engine.load import load_run
    from conceptclip.knowledge.schema import save_bank

    bank = save_bank(simple_bank("pets", {"cat": ["white dots"], "dog": ["dark spots", "white dots"],
                                          "fish": ["blue network"]}, PROV), tmp_path / "pets.json")
    ds = from_folder(image_folder)
    split = fewshot_split(ds, holdout_split(ds), 2, 1)
    out = tmp_path / "run"
    metrics = run_experiment("ecor", ds, split, tiny_clip, out,
                             method_config={"bank": str(bank), "visual_prompt": "shallow", "n_prompt_tokens": 2},
                             train_config={"epochs": 2, "progress": False})
    assert metrics["test"]["n"] == len(split.parts["test"])
    assert json.loads((out / "config.json").read_text())["method"]["rationale_space"]["pairs"] == 9
    method, _ = load_run(out)
    probs = predict(method, build_part(ds, split.parts["test"], method.inputs, method.backbone, FeatureCache()))
    rows = [line.split(",") for line in (out / "predictions.csv").read_text().splitlines()[1:]]
    assert torch.allclose(probs, torch.tensor([[float(v) for v in r[3:]] for r in rows]), atol=1e-5)


def test_similarities_are_scaled_cosines_per_image(tiny_clip):
    """logit_scale · cos(f(I), g(prompt)) for each image on its own (a batch of three)."""
    m = create_method("ecor", tiny_clip, CLASSES, {"visual_prompt": "none"}, bank=BANK)
    f = torch.randn(3, tiny_clip.embed_dim, generator=torch.Generator().manual_seed(2))
    sims = m.similarities(f)
    s = float(tiny_clip.logit_scale)
    for i in range(3):
        for j in range(m.pair_text.shape[0]):
            cos = float(torch.nn.functional.cosine_similarity(f[i], m.pair_text[j], dim=0))
            assert float(sims["pair_logits"][i, j]) == pytest.approx(s * cos, rel=1e-4, abs=1e-5)
    out = m.predict_rationales({"features": f})
    torch.testing.assert_close(out["rationale_probs"].sum(1), torch.ones(3))
    torch.testing.assert_close(out["rationale_probs"][0], sims["rationale_logits"][0].softmax(0))
