"""XCoOp's prompts and method: soft prompts as long as the concept prompts, splicing that matches
the stock text path, gradients only for the soft tokens, knowledge from banks, interventions,
configuration and errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conceptclip.errors import ConfigError
from conceptclip.methods import create_method
from conceptclip.methods.xcoop import IRRELEVANT_CONCEPTS, XCoOp, XCoOpConfig
from conceptclip.prompts.concept_context import MatchedContextPrompt, reference_prompts, special_token_ids

CLASSES = ["melanoma", "nevus"]  # as in conftest.py
PROMPTS = {"melanoma": "a photo of melanoma, which has blue veil.", "nevus": "a photo of nevus, which has round shape."}

ROOT = Path(__file__).resolve().parents[2]


def test_soft_prompt_has_one_token_per_concept_prompt_token(make_xcoop, tiny_clip):
    method = make_xcoop()
    tok = tiny_clip.tokenize([PROMPTS[c] for c in CLASSES])
    lengths = (tok.attention_mask.sum(1) - 2).tolist()  # minus start and end tokens
    assert method.prompt.lengths == lengths == method.reference.lengths
    assert method.prompt.ctx.shape == (sum(lengths), tiny_clip.text_width)
    ids = torch.cat([row[1:n + 1] for row, n in zip(tok.input_ids, lengths)])
    torch.testing.assert_close(method.token_targets, tiny_clip.token_embedding(ids).detach())
    # class 0's context sits in the first M_0 rows, and the prompt text is "X ... X melanoma."
    assert method.prompt.prompts[0] == " ".join(["X"] * lengths[0] + ["melanoma"]) + "."
    torch.testing.assert_close(method.prompt.class_context(1), method.prompt.ctx[lengths[0]:])


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
    method = make_xcoop(ctx_init="concepts")
    torch.testing.assert_close(method.prompt.ctx.detach(), method.token_targets)
    assert float(method.loss(batch)["token"]) == 0.0


def test_only_the_soft_tokens_get_gradients(make_xcoop, batch):
    method = make_xcoop()
    trainable = {n for n, p in method.named_parameters() if p.requires_grad}
    assert trainable == {"prompt.ctx"}
    assert set(method.learned_state()) == {"prompt.ctx"}  # targets and concept features are recomputed
    method.loss(batch)["loss"].backward()
    for n, p in method.named_parameters():
        if n == "prompt.ctx":
            for c in range(len(CLASSES)):  # every class's soft tokens learn
                assert float(p.grad[method.prompt.slices[c]].abs().sum()) > 0
        else:
            assert p.grad is None, f"frozen parameter {n} received a gradient"
    assert method.token_targets.grad is None and not method.hard_features.requires_grad


def test_inference_is_the_global_image_prompt_similarity(make_xcoop, batch, tiny_clip):
    method = make_xcoop()
    text = F.normalize(method.prompt(), dim=-1)
    want = tiny_clip.logit_scale * F.normalize(batch["features"], dim=-1) @ text.t()
    torch.testing.assert_close(method.logits({"features": batch["features"]}), want)


def _train(method, batch, steps: int = 60):
    opt = torch.optim.SGD(method.trainable_parameters(), lr=0.032, momentum=0.9)
    for _ in range(steps):
        opt.zero_grad()
        method.loss(batch)["loss"].backward()
        opt.step()
    return method.loss(batch)


def test_sgd_fits_the_labels_and_token_alignment_keeps_the_tokens_near_the_concepts(make_xcoop, tiny_clip):
    torch.manual_seed(1)  # the soft tokens' N(0, 0.02^2) initialisation
    gen = torch.Generator().manual_seed(1)
    method, free = make_xcoop(), make_xcoop(token_alignment=False)
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
    assert rand.prompt.lengths == clinical.prompt.lengths
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
    method = create_method("xcoop", tiny_clip, CLASSES, {"bank": str(bank), "modality": "photo",
                                                          "knowledge": "irrelevant"})
    texts = method.reference.texts
    assert texts[0].startswith("a photo image of melanoma, which has ")
    used = [p for p in IRRELEVANT_CONCEPTS if texts[0] == f"a photo image of melanoma, which has {p}."]
    assert len(used) == 1  # as many everyday phrases as clinical concepts, none of the clinical ones
    assert method.knowledge.concepts["melanoma"] == ["blue veil"]  # explanations still use the clinical ones
    again = create_method("xcoop", tiny_clip, CLASSES, {"bank": str(bank), "modality": "photo",
                                                         "knowledge": "irrelevant"})
    assert again.reference.texts == texts


def _bank(tmp_path: Path, classes: dict | None = None) -> Path:
    from conceptclip.knowledge.schema import Provenance, save_bank, simple_bank

    classes = classes or {"melanoma": ["blue veil", "dark dots"], "nevus": ["round shape"]}
    bank = simple_bank("toy", classes, Provenance(kind="annotation", citation="hand-written test bank"))
    return save_bank(bank, tmp_path / "bank.json")


def test_bank_concepts_build_the_clinical_prompts(tiny_clip, tmp_path):
    method = create_method("xcoop", tiny_clip, CLASSES, {"bank": str(_bank(tmp_path)), "modality": "photo"})
    assert method.knowledge.clinical_prompts == {
        "melanoma": "a photo image of melanoma, which has blue veil, dark dots.",
        "nevus": "a photo image of nevus, which has round shape."}
    assert method.concept_names == ["blue veil", "dark dots", "round shape"]
    top1 = create_method("xcoop", tiny_clip, CLASSES, {"bank": str(_bank(tmp_path)), "modality": "photo", "top_k": 1})
    assert top1.knowledge.concepts["melanoma"] == ["blue veil"]
    mapped = create_method("xcoop", tiny_clip, ["mel", "nevus"], {"bank": str(_bank(tmp_path)), "modality": "photo",
                                                                  "class_map": {"mel": "melanoma"}})
    assert mapped.knowledge.concepts["mel"] == ["blue veil", "dark dots"]
    with pytest.raises(ConfigError, match="no class 'keratosis'.*class_map"):
        create_method("xcoop", tiny_clip, ["keratosis"], {"bank": str(_bank(tmp_path))})


@pytest.mark.parametrize("options, message", [
    ({"knowledge": "made-up"}, "knowledge='made-up'"),
    ({"local_pool": "median"}, "local_pool='median'"),
    ({"ctx_init": "zeros"}, "ctx_init='zeros'"),
    ({"tau": 0.0}, "tau=0.0"),
    ({"lam": -1.0}, "lam=-1.0"),
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
    with pytest.raises(ConfigError, match="fills the backbone's context length"):
        reference_prompts(tiny_clip, ["blue " * 40])


def test_ph2_config_file_holds_the_paper_defaults():
    conf = json.loads((ROOT / "configs" / "xcoop_ph2.json").read_text())
    assert conf["method"] == "xcoop" and conf["dataset"] == "ph2"
    defaults = XCoOpConfig()
    for key, value in conf["method_options"].items():
        assert getattr(defaults, key) == value, key
    assert defaults.tau == 0.9 and defaults.lam == 0.1
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
        "a dermoscopy image of common nevus, which has typical pigment network, symmetric shape, light-brown colour, "
        "dark-brown colour, typical dots and globules.")
    assert knowledge.concepts["melanoma"][:4] == ["atypical pigment network", "dark-brown colour", "asymmetry",
                                                  "blue-whitish veil"]
    assert knowledge.frequency["common nevus"]["typical pigment network"] == 1.0
    top2 = resolve_knowledge(XCoOpConfig(top_k=2), classes)
    assert top2.concepts["atypical nevus"] == ["atypical pigment network", "dark-brown colour"]
    with pytest.raises(ConfigError, match="context length"):  # tiny-clip's 32 tokens hold none of them
        create_method("xcoop", tiny_clip, classes)
