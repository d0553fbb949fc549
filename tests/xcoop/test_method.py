"""XCoOp's prompts and method: the paper's soft prompt (4 class-specific tokens from "a photo of a"),
the matched long prompt option and its splicing, gradients only for the soft tokens, knowledge from
banks (no PH2 default on other classes), interventions, old configs, configuration and errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conceptclip.errors import ConfigError
from conceptclip.methods import create_method
from conceptclip.methods.xcoop import IRRELEVANT_CONCEPTS, V1_OPTIONS, XCoOp, XCoOpConfig
from conceptclip.prompts.concept_context import MatchedContextPrompt, reference_prompts, special_token_ids

CLASSES = ["melanoma", "nevus"]  # as in conftest.py
PROMPTS = {"melanoma": "a photo of melanoma, which has blue veil.", "nevus": "a photo of nevus, which has round shape."}

ROOT = Path(__file__).resolve().parents[2]


def test_paper_soft_prompt_is_four_class_specific_tokens_from_a_photo_of_a(make_xcoop, tiny_clip):
    method = make_xcoop()
    assert method.prompt.prompts == ["X X X X melanoma.", "X X X X nevus."]
    init = tiny_clip.token_embedding(tiny_clip.tokenize(["a photo of a"]).input_ids[0, 1:5]).detach()
    assert method.prompt.ctx.shape == (2, 4, tiny_clip.text_width)
    for c in range(2):  # one context per class, each starting on "a photo of a"
        torch.testing.assert_close(method.prompt.ctx[c].detach(), init)
    # at initialisation the soft prompt is exactly the text "a photo of a [class]."
    torch.testing.assert_close(method.prompt(), tiny_clip.encode_texts(["a photo of a melanoma.", "a photo of a nevus."]),
                               rtol=1e-5, atol=1e-6)
    # each soft token pairs with the clinical token at its position (1..4, after the start token)
    assert method.soft_cols.tolist() == [1, 2, 3, 4] * 2 and method.soft_rows.tolist() == [0] * 4 + [1] * 4
    clin = tiny_clip.tokenize([PROMPTS[c] for c in CLASSES]).input_ids
    torch.testing.assert_close(method.token_targets, tiny_clip.token_embedding(clin[:, 1:5].reshape(-1)).detach())
    assert method.describe()["soft_prompt_lengths"] == [4, 4]
    rand = make_xcoop(ctx_init="random", n_ctx=6)
    assert rand.prompt.ctx.shape == (2, 6, tiny_clip.text_width) and float(rand.prompt.ctx.std()) < 0.05


def test_matched_soft_prompt_has_one_token_per_concept_prompt_token(make_xcoop, tiny_clip):
    method = make_xcoop(soft_prompt="matched", ctx_init="random")
    tok = tiny_clip.tokenize([PROMPTS[c] for c in CLASSES])
    lengths = (tok.attention_mask.sum(1) - 2).tolist()  # minus start and end tokens
    assert method.prompt.lengths == lengths == method.reference.lengths
    assert method.prompt.ctx.shape == (sum(lengths), tiny_clip.text_width)
    ids = torch.cat([row[1:n + 1] for row, n in zip(tok.input_ids, lengths)])
    torch.testing.assert_close(method.token_targets, tiny_clip.token_embedding(ids).detach())
    # class 0's context sits in the first M_0 rows, and the prompt text is "X ... X melanoma."
    assert method.prompt.prompts[0] == " ".join(["X"] * lengths[0] + ["melanoma"]) + "."
    torch.testing.assert_close(method.prompt.class_context(1), method.prompt.ctx[lengths[0]:])


def test_matched_prompt_and_reference_edge_cases(tiny_clip):
    one = MatchedContextPrompt(tiny_clip, CLASSES, [1, 2])  # one context token is enough
    assert one.ctx.shape[0] == 3 and 0.015 < float(one.ctx.std()) < 0.025  # N(0, 0.02^2) by default
    assert abs(float(MatchedContextPrompt(tiny_clip, CLASSES, [8, 8]).ctx.mean())) < 0.01
    given = MatchedContextPrompt(tiny_clip, CLASSES, [1, 2], init=torch.ones(3, tiny_clip.text_width))
    torch.testing.assert_close(given.ctx.detach(), torch.ones(3, tiny_clip.text_width))
    with pytest.raises(ConfigError, match="init of shape"):
        MatchedContextPrompt(tiny_clip, CLASSES, [1, 2], init=torch.ones(2, tiny_clip.text_width))
    assert 0.015 < float(MatchedContextPrompt(tiny_clip, CLASSES, [8, 8]).ctx.std()) < 0.025
    with pytest.raises(ConfigError, match="at least one context token"):
        MatchedContextPrompt(tiny_clip, CLASSES, [0, 2])
    ref = reference_prompts(tiny_clip, ["melanoma", "a photo"])  # a single content token is a prompt
    assert ref.lengths == [1, 2]
    # the random intervention is seeded, seed 0 by default
    vocab, special = tiny_clip.token_embedding.num_embeddings, special_token_ids(tiny_clip)
    torch.testing.assert_close(ref.randomized(vocab, special).tokens.input_ids,
                               ref.randomized(vocab, special, 0).tokens.input_ids)
    assert not torch.equal(ref.randomized(vocab, special).tokens.input_ids,
                           ref.randomized(vocab, special, 1).tokens.input_ids)


def test_splicing_the_placeholder_embeddings_reproduces_the_stock_text_path(tiny_clip):
    prompt = MatchedContextPrompt(tiny_clip, CLASSES, [3, 5])
    x_id = tiny_clip.tokenize(["X"]).input_ids[0, 1]
    with torch.no_grad():
        prompt.ctx.copy_(tiny_clip.token_embedding(x_id).expand(8, -1))
        ours = prompt()
    stock = tiny_clip.encode_texts(["X X X melanoma.", "X X X X X nevus."])
    torch.testing.assert_close(ours, stock, rtol=1e-5, atol=1e-6)
    embeds = prompt.embeds()
    torch.testing.assert_close(embeds[prompt.ctx_rows, prompt.ctx_cols], prompt.ctx)


def test_concept_initialisation_puts_the_soft_prompt_on_the_concept_tokens(make_xcoop, batch):
    for soft in ("matched", "paper"):
        method = make_xcoop(soft_prompt=soft, ctx_init="concepts", token_loss="squared")
        torch.testing.assert_close(method.soft_tokens().detach(), method.token_targets)
        assert float(method.loss(batch)["token"]) == 0.0


def test_only_the_soft_tokens_get_gradients(make_xcoop, batch):
    for options in ({}, {"soft_prompt": "matched", "ctx_init": "random"}):
        method = make_xcoop(**options)
        trainable = {n for n, p in method.named_parameters() if p.requires_grad}
        assert trainable == {"prompt.ctx"}
        assert set(method.learned_state()) == {"prompt.ctx"}  # targets and concept features are recomputed
        method.loss(batch)["loss"].backward()
        for n, p in method.named_parameters():
            if n == "prompt.ctx":
                grad = p.grad.reshape(-1, p.shape[-1])
                for c in range(len(CLASSES)):  # every class's soft tokens learn
                    assert float(grad[method.soft_rows == c].abs().sum()) > 0
            else:
                assert p.grad is None, f"frozen parameter {n} received a gradient"
        for name in ("token_targets", "clinical_tokens", "hard_features", "soft_pad"):
            assert not getattr(method, name).requires_grad


def test_inference_reads_the_patches_unless_global(make_xcoop, batch, tiny_clip):
    with pytest.raises(ConfigError, match="patch tokens"):
        make_xcoop().logits({"features": batch["features"]})
    method = make_xcoop(inference="global")
    text = F.normalize(method.prompt(), dim=-1)
    want = tiny_clip.logit_scale * F.normalize(batch["features"], dim=-1) @ text.t()
    torch.testing.assert_close(method.logits({"features": batch["features"]}), want)


def _train(method, batch, steps: int = 60):
    opt = torch.optim.SGD(method.trainable_parameters(), lr=0.032, momentum=0.9)
    for _ in range(steps):
        opt.zero_grad()
        method.loss(batch)["loss"].backward()
        torch.nn.utils.clip_grad_norm_(method.trainable_parameters(), XCoOp.train_defaults["max_grad_norm"])
        opt.step()
    return method.loss(batch)


def test_sgd_fits_the_labels_with_the_paper_defaults(make_xcoop, tiny_clip):
    gen = torch.Generator().manual_seed(1)
    method = make_xcoop()
    labels = torch.arange(16) % 2
    feats = method.hard_features[labels] + 0.3 * torch.randn(16, tiny_clip.embed_dim, generator=gen)
    batch = {"features": feats, "patches": feats[:, None] + 0.3 * torch.randn(16, 4, tiny_clip.embed_dim, generator=gen),
             "labels": labels}
    first = method.loss(batch)
    last = _train(method, batch)
    assert float(last["ipa"]) < 0.5 * float(first["ipa"]) and float(last["prompt"]) < float(first["prompt"])
    assert float((method.logits(batch).argmax(1) == labels).float().mean()) >= 0.75


def test_squared_token_alignment_keeps_the_matched_tokens_near_the_concepts(make_xcoop, tiny_clip):
    torch.manual_seed(1)  # the soft tokens' N(0, 0.02^2) initialisation
    gen = torch.Generator().manual_seed(1)
    v1 = {k: v for k, v in V1_OPTIONS.items() if k in ("soft_prompt", "ctx_init", "token_loss", "ipa", "inference",
                                                        "prompt_reduction", "weight_token", "weight_prompt")}
    method, free = make_xcoop(**v1), make_xcoop(**v1, token_alignment=False)
    free.prompt.ctx.data.copy_(method.prompt.ctx.data)
    labels = torch.arange(16) % 2
    feats = method.hard_features[labels] + 0.3 * torch.randn(16, tiny_clip.embed_dim, generator=gen)
    batch = {"features": feats, "patches": feats[:, None] + 0.3 * torch.randn(16, 4, tiny_clip.embed_dim, generator=gen),
             "labels": labels}
    first = method.loss(batch)
    last, last_free = _train(method, batch), _train(free, batch)
    assert float(last["ce"]) < 0.5 * float(first["ce"])
    assert float((method.logits(batch).argmax(1) == labels).float().mean()) >= 0.75
    # the classification gradient pushes the tokens away from the concept embeddings; L_T holds them back
    assert float(last["token"]) < 0.5 * float(last_free["token"])


def test_random_knowledge_keeps_lengths_and_special_tokens_but_not_the_words(make_xcoop, tiny_clip):
    clinical, rand = make_xcoop(), make_xcoop(knowledge="random", knowledge_seed=3)
    assert rand.reference.lengths == clinical.reference.lengths
    a, b = clinical.reference.tokens.input_ids, rand.reference.tokens.input_ids
    mask = clinical.reference.content_mask
    torch.testing.assert_close(a[~mask], b[~mask])  # start/end/padding untouched
    assert float((a[mask] != b[mask]).float().mean()) > 0.8
    assert not set(b[mask].tolist()) & special_token_ids(tiny_clip)
    again = make_xcoop(knowledge="random", knowledge_seed=3)
    torch.testing.assert_close(again.reference.tokens.input_ids, b)
    assert not torch.allclose(rand.hard_features, clinical.hard_features)
    assert rand.knowledge.clinical_prompts == clinical.knowledge.clinical_prompts  # explanations keep the clinic


def test_irrelevant_knowledge_swaps_the_concepts_for_everyday_objects(tiny_clip, tmp_path):
    bank = _bank(tmp_path, {"melanoma": ["blue veil"], "nevus": ["round shape"]})
    method = create_method("xcoop", tiny_clip, CLASSES, {"bank": str(bank), "knowledge": "irrelevant"})
    texts = method.reference.texts
    assert texts[0].startswith("a photo of melanoma, with ")
    used = [p for p in IRRELEVANT_CONCEPTS if texts[0] == f"a photo of melanoma, with {p}."]
    assert len(used) == 1  # as many everyday phrases as clinical concepts, none of the clinical ones
    assert method.knowledge.concepts["melanoma"] == ["blue veil"]  # explanations still use the clinical ones
    again = create_method("xcoop", tiny_clip, CLASSES, {"bank": str(bank), "knowledge": "irrelevant"})
    assert again.reference.texts == texts


def test_irrelevant_knowledge_from_given_prompts_counts_their_items():
    from conceptclip.methods.xcoop import Knowledge, irrelevant_prompts

    # no concept list: as many everyday phrases as the prompt has comma-separated items
    prompts = {"melanoma": "a photo of melanoma, which has blue veil.", "nevus": "a photo of nevus."}
    out = irrelevant_prompts(Knowledge({c: [] for c in CLASSES}, {}, prompts, "given prompts"), XCoOpConfig())
    texts = [out[c] for c in CLASSES]
    two = {f"a photo of melanoma, with {a}, and {b}." for a in IRRELEVANT_CONCEPTS for b in IRRELEVANT_CONCEPTS}
    assert texts[0] in two
    assert texts[1] in {f"a photo of nevus, with {a}." for a in IRRELEVANT_CONCEPTS}


def _bank(tmp_path: Path, classes: dict | None = None) -> Path:
    from conceptclip.knowledge.schema import Provenance, save_bank, simple_bank

    classes = classes or {"melanoma": ["blue veil", "dark dots"], "nevus": ["round shape"]}
    bank = simple_bank("toy", classes, Provenance(kind="annotation", citation="hand-written test bank"))
    return save_bank(bank, tmp_path / "bank.json")


def test_bank_concepts_build_the_clinical_prompts(tiny_clip, tmp_path):
    three = _bank(tmp_path, {"melanoma": ["blue veil", "dark dots", "white lines"], "nevus": ["round shape"]})
    method = create_method("xcoop", tiny_clip, CLASSES, {"bank": str(three)})
    assert method.knowledge.clinical_prompts == {  # the paper's Sec. 2.1 example form
        "melanoma": "a photo of melanoma, with blue veil, dark dots, and white lines.",
        "nevus": "a photo of nevus, with round shape."}
    modality = create_method("xcoop", tiny_clip, CLASSES, {"bank": str(_bank(tmp_path)), "modality": "photo",
                                                           "clinical_template": "modality"})
    assert modality.knowledge.clinical_prompts == {
        "melanoma": "a photo image of melanoma, which has blue veil, dark dots.",
        "nevus": "a photo image of nevus, which has round shape."}
    method = create_method("xcoop", tiny_clip, CLASSES, {"bank": str(_bank(tmp_path))})
    assert method.concept_names == ["blue veil", "dark dots", "round shape"]
    top1 = create_method("xcoop", tiny_clip, CLASSES, {"bank": str(_bank(tmp_path)), "top_k": 1})
    assert top1.knowledge.concepts["melanoma"] == ["blue veil"]
    mapped = create_method("xcoop", tiny_clip, ["mel", "nevus"], {"bank": str(_bank(tmp_path)),
                                                                  "class_map": {"mel": "melanoma"}})
    assert mapped.knowledge.concepts["mel"] == ["blue veil", "dark dots"]
    with pytest.raises(ConfigError, match="no class 'keratosis'.*class_map"):
        create_method("xcoop", tiny_clip, ["keratosis"], {"bank": str(_bank(tmp_path))})


@pytest.mark.parametrize("options, message", [
    ({"knowledge": "made-up"}, "knowledge='made-up'"),
    ({"local_pool": "median"}, "local_pool='median'"),
    ({"soft_prompt": "matched", "ctx_init": "zeros"}, "ctx_init='zeros'"),
    ({"tau": 0.0}, "tau=0.0"),
    ({"lam": -1.0}, "lam=-1.0"),
    ({"weight_ipa": -1.0}, "weight_ipa=-1.0"),
    ({"n_ctx": 0, "ctx_init": "random"}, "n_ctx=0"),
    ({"soft_prompt": "long"}, "soft_prompt='long'"),
    ({"soft_prompt": "matched"}, "ctx_init='a photo of a' with soft_prompt='matched'"),
    ({"token_loss": "l1"}, "token_loss='l1'"),
    ({"prompt_reduction": "max"}, "prompt_reduction='max'"),
    ({"ipa": "three"}, "ipa='three'"),
    ({"inference": "local"}, "inference='local'"),
    ({"clinical_template": "x"}, "clinical_template='x'"),
    ({"concept_prompts": {"melanoma": "a photo of melanoma."}}, r"no prompt for classes \['nevus'\]"),
    ({"concept_prompts": {"melanoma": "a " + "blue veil " * 20, "nevus": "nevus"}}, "context length"),
    ({"unknown_option": 1}, "unknown option"),
])
def test_bad_options_are_one_line_config_errors(tiny_clip, options, message):
    opts = {"concept_prompts": dict(PROMPTS), **options}
    with pytest.raises(ConfigError, match=message) as err:
        create_method("xcoop", tiny_clip, CLASSES, opts)
    assert "\n" not in str(err.value)


def test_local_alignment_without_patches_is_a_clear_error(make_xcoop, batch):
    no_patches = {k: v for k, v in batch.items() if k != "patches"}
    with pytest.raises(ConfigError, match="patch tokens"):
        make_xcoop().loss(no_patches)
    terms = make_xcoop(local_alignment=False).loss(no_patches)
    assert "local" not in terms and float(terms["loss"].detach()) > 0


def test_soft_prompt_longer_than_the_context_is_refused(tiny_clip):
    # tiny-clip: 32 tokens; "<sot> X*28 melanoma . <eot>" = 28 + 4 fills the context exactly and is not cut
    assert tiny_clip.context_length == 32
    exact = MatchedContextPrompt(tiny_clip, ["melanoma", "atypical nevus"], [28, 27])  # atypical nevus: 2 tokens
    assert exact.attention_mask.sum(1).tolist() == [32, 32] and exact.eot_index.tolist() == [31, 31]
    words = [tiny_clip.tokenizer.convert_ids_to_tokens(row[-3:].tolist()) for row in exact.input_ids]
    assert words == [["melanoma", ".", "<eot>"], ["nevus", ".", "<eot>"]]
    assert exact.ctx_cols[:28].tolist() == list(range(1, 29)) and exact.ctx.shape[0] == 55
    for n in (29, 30, 40):  # one token more cuts the "."; 30 the class name itself
        with pytest.raises(ConfigError, match=f"melanoma' \\({n} context tokens \\+ class name\\) does not fit "
                                              f"the backbone's context length: it needs {n + 4} tokens, 32 are"):
            MatchedContextPrompt(tiny_clip, ["melanoma"], [n])
    with pytest.raises(ConfigError, match="'atypical nevus' \\(28 context tokens .* needs 33 tokens"):
        MatchedContextPrompt(tiny_clip, ["melanoma", "atypical nevus"], [28, 28])
    with pytest.raises(ConfigError, match="fills the backbone's context length") as err:
        reference_prompts(tiny_clip, ["blue " * 40])
    assert str(err.value).startswith(f"reference prompt {('blue ' * 40)[:60]!r}... fills")  # its first 60 characters


def test_ph2_config_file_holds_the_paper_defaults():
    conf = json.loads((ROOT / "configs" / "xcoop_ph2.json").read_text())
    assert conf["method"] == "xcoop" and conf["dataset"] == "ph2"
    defaults = XCoOpConfig()
    for key, value in conf["method_options"].items():
        assert getattr(defaults, key) == value, key
    assert defaults.tau == 0.9 and defaults.lam == 0.1 and defaults.n_ctx == 4 and defaults.ctx_init == "a photo of a"
    assert (defaults.weight_token, defaults.weight_prompt, defaults.weight_ipa) == (0.5, 0.5, 1.0)  # L_PPA + L_IPA
    assert (defaults.soft_prompt, defaults.token_loss, defaults.prompt_reduction, defaults.ipa, defaults.inference) == (
        "paper", "contrastive", "sum", "paper", "global_local")
    train = conf["train_options"]
    assert train["lr"] == 0.032 and train["optimizer"] == "sgd" and train["scheduler"] == "cosine"
    assert train["warmup_epochs"] >= 1
    for key, value in XCoOp.train_defaults.items():
        assert train[key] == value, key
    from conceptclip.engine.config import TrainConfig

    cfg = TrainConfig.from_dict(train)
    assert cfg.lr_at(0) == 1e-5 and cfg.lr_at(1) < 0.032 and cfg.lr_at(cfg.epochs - 1) < 0.001


@pytest.mark.shared_data
def test_ph2_clinical_prompts_from_the_annotations(tiny_clip):
    from conceptclip.data.ph2 import ph2_dir
    from conceptclip.methods.xcoop import resolve_knowledge

    if not (ph2_dir() / "labels.csv").is_file():
        pytest.skip(f"PH2 not found at {ph2_dir()}")
    classes = ["common nevus", "atypical nevus", "melanoma"]
    knowledge = resolve_knowledge(XCoOpConfig(), classes)  # default bank "ph2": criteria in >= 25 % of a class
    assert knowledge.clinical_prompts["common nevus"] == (
        "a photo of common nevus, with typical pigment network, symmetric shape, light-brown colour, "
        "dark-brown colour, and typical dots and globules.")
    v1 = resolve_knowledge(XCoOpConfig(**V1_OPTIONS), classes)
    assert v1.clinical_prompts["common nevus"] == (
        "a dermoscopy image of common nevus, which has typical pigment network, symmetric shape, light-brown colour, "
        "dark-brown colour, typical dots and globules.")
    assert knowledge.concepts["melanoma"][:4] == ["atypical pigment network", "dark-brown colour", "asymmetry",
                                                  "blue-whitish veil"]
    assert knowledge.frequency["common nevus"]["typical pigment network"] == 1.0
    top2 = resolve_knowledge(XCoOpConfig(top_k=2), classes)
    assert top2.concepts["atypical nevus"] == ["atypical pigment network", "dark-brown colour"]
    with pytest.raises(ConfigError, match="context length"):  # tiny-clip's 32 tokens hold none of them
        create_method("xcoop", tiny_clip, classes)


def test_no_ph2_default_on_other_classes(tiny_clip, tmp_path):
    from conceptclip.methods.xcoop import resolve_knowledge

    for classes in (["circle", "square"], ["melanoma", "nevus"], ["common nevus", "melanoma"]):
        with pytest.raises(ConfigError, match=r"set bank=NAME or bank=FILE.json .*concept_prompts") as err:
            create_method("xcoop", tiny_clip, classes)
        assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="modality='drawing' is used only by clinical_template=modality"):
        create_method("xcoop", tiny_clip, CLASSES, {"bank": str(_bank(tmp_path)), "modality": "drawing"})
    used = create_method("xcoop", tiny_clip, CLASSES, {"bank": str(_bank(tmp_path)), "modality": "drawing",
                                                        "concept_template": "a {modality} with {concept}."})
    assert used.knowledge.clinical_prompts["nevus"] == "a photo of nevus, with round shape."
    with pytest.raises(ConfigError, match="clinical_template='modality' needs modality="):
        resolve_knowledge(XCoOpConfig(bank=str(_bank(tmp_path)), clinical_template="modality"), CLASSES)
    # a given bank needs no PH2 classes and names no modality
    shapes = {"circle": ["round edge"], "square": ["four corners"], "star": ["five points"]}
    method = create_method("xcoop", tiny_clip, list(shapes), {"bank": str(_bank(tmp_path, shapes))})
    assert method.knowledge.clinical_prompts["circle"] == "a photo of circle, with round edge."
    assert method.concept_features().shape[0] == 3
    gen = torch.Generator().manual_seed(0)
    batch = {"features": torch.randn(6, tiny_clip.embed_dim, generator=gen), "labels": torch.arange(6) % 3,
             "patches": torch.randn(6, 4, tiny_clip.embed_dim, generator=gen)}
    assert method.logits(batch).shape == (6, 3) and torch.isfinite(method.loss(batch)["loss"])
    # zero weights are allowed (a term off by its weight), negative ones are not
    off = create_method("xcoop", tiny_clip, list(shapes), {"bank": str(_bank(tmp_path, shapes)), "lam": 0.0,
                                                           "weight_token": 0.0, "weight_prompt": 0.0})
    terms = off.loss(batch)
    torch.testing.assert_close(terms["loss"], terms["ce"])
    assert method.config.concept_template.format(concept="x") == "a photo with x."


def test_a_config_saved_before_the_paper_defaults_runs_as_trained(tiny_clip, tmp_path, batch):
    import dataclasses

    from conceptclip.methods.xcoop import NEW_FIELDS

    old = {k: v for k, v in dataclasses.asdict(XCoOpConfig()).items() if k not in NEW_FIELDS}
    old.update(bank="ph2", modality="dermoscopy", ctx_init="random", weight_token=1.0, weight_prompt=1.0,
               concept_template="a {modality} image with {concept}.", concept_prompts=dict(PROMPTS))
    method = create_method("xcoop", tiny_clip, CLASSES, old)
    for key, value in V1_OPTIONS.items():
        if key not in ("bank", "concept_template", "modality"):
            assert getattr(method.config, key) == value, key
    assert method.prompt.ctx.shape[0] == sum(method.reference.lengths)  # the matched long prompt
    # a new config (with any new field) is not touched
    assert create_method("xcoop", tiny_clip, CLASSES, {**old, "n_ctx": 4, "ctx_init": "a photo of a"}
                         ).config.soft_prompt == "paper"
