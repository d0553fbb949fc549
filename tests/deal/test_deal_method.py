"""DEAL as a method: its prompts, where its concepts come from, its scores and contributions, its
explanations (Grad-CAM and Chefer relevance on a ViT, similarity maps), errors, and a run through
the engine that re-loads from its results folder."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conceptclip.errors import ConfigError
from conceptclip.explain import ClassTarget, explain_method, similarity_maps
from conceptclip.knowledge import Provenance, save_bank, simple_bank
from conceptclip.methods import create_method
from conceptclip.prompts import encode_prompts
from conceptclip.prompts.concept_lists import resolve_concepts
from deal_helpers import CONCEPTS, make_deal, token_batch

PAPER = Provenance(kind="paper", citation="a toy list written for this test")


def test_prompts_are_the_deal_template_and_start_as_its_text(tiny_clip):
    method = make_deal(tiny_clip, perturb=False)
    expected = ["An image of melanoma with blue veil, dark dots, and streaks.",  # the paper's template (Sec. 3.2)
                "An image of nevus with pigment network and brown globules.",
                "An image of keratosis with white cells, smooth edge, and pink area."] + \
        [f"An image of {c} with {x}." for c, p in CONCEPTS.items() for x in p]
    assert method.prompt_texts() == expected
    assert expected[0] == "An image of melanoma with blue veil, dark dots, and streaks."  # the paper's template
    assert expected[3] == "An image of melanoma with blue veil."
    # the context starts as the template's words, so the learned prompts start as the written ones
    with torch.no_grad():
        torch.testing.assert_close(method.all_text_features(), encode_prompts(tiny_clip, expected), rtol=1e-5,
                                   atol=1e-6)
    assert method.concept_names == [f"{c}: {x}" for c, p in CONCEPTS.items() for x in p]


def test_defaults_are_the_papers_and_the_earlier_readings_are_options(tiny_clip):
    from conceptclip.methods.deal import DEALConfig

    c = DEALConfig()
    assert (c.contrastive, c.explain_prompts, c.disen_reduction) == ("infonce", "raw", "sum")  # Eqs. 2-3, Sec. 3.2
    assert (c.lambda_disen, c.lambda_local, c.n_concepts, c.heatmap, c.map_norm) == (1.0, 1.0, 5, "gradcam", "sum")
    assert (c.ctx_init, c.n_ctx, c.image_adapter) == ("an image of", 3, True)
    random_ctx = make_deal(tiny_clip, {"ctx_init": "", "n_ctx": 8}, perturb=False)  # N(0, 0.02^2) vectors
    assert 0.016 < float(random_ctx.prompt.ctx.detach().std()) < 0.024
    previous = make_deal(tiny_clip, {"explain_prompts": "template", "contrastive": "classes",
                                     "disen_reduction": "mean"})
    assert not hasattr(previous, "raw_text")
    batch = token_batch(tiny_clip.embed_dim)
    terms = previous.loss(batch)
    torch.testing.assert_close(terms["contr"], F.cross_entropy(previous.logits(batch), batch["labels"]).detach())


def test_concept_tables_pad_classes_with_fewer_concepts(tiny_clip):
    method = make_deal(tiny_clip)
    # flat rows: melanoma 0-2, nevus 3-4 (padded with its first row), keratosis 5-7
    assert method.concept_index.tolist() == [[0, 1, 2], [3, 4, 3], [5, 6, 7]]
    assert method.concept_mask.tolist() == [[True] * 3, [True, True, False], [True] * 3]


def test_concepts_from_a_bank_file_with_class_map_and_top_k(tiny_clip, tmp_path):
    bank = simple_bank("toy", {"mel": ["blue veil", "dark dots", "streaks"], "Nevus": ["pigment network"],
                               "keratosis": ["white cells", "smooth edge"]}, source=PAPER)
    path = save_bank(bank, tmp_path / "toy.json")
    method = create_method("deal", tiny_clip, ["melanoma", "nevus", "keratosis"],
                           {"bank": str(path), "class_map": {"melanoma": "mel"}, "n_concepts": 2})
    assert method.concept_lists.concepts == [["blue veil", "dark dots"], ["pigment network"],
                                             ["white cells", "smooth edge"]]
    assert method.concept_lists.sources["melanoma"] == "bank toy: mel"
    # the resolved lists are recorded in the config: a results folder re-creates the same prompts
    assert method.config.concepts["nevus"] == ["pigment network"]
    assert method.describe()["concepts"]["concepts"]["keratosis"] == ["white cells", "smooth edge"]


def test_concept_resolution_errors(tiny_clip, tmp_path):
    with pytest.raises(ConfigError, match="deal needs concepts: set bank \\(--set bank="):
        create_method("deal", tiny_clip, ["melanoma", "nevus"])
    for key, value in (("contrastive", "triplet"), ("explain_prompts", "sentence"), ("disen_reduction", "max")):
        with pytest.raises(ConfigError, match=f"deal {key}='{value}': expected one of"):
            make_deal(tiny_clip, {key: value})
    with pytest.raises(ConfigError, match="no concept phrases given for class 'nevus'"):
        create_method("deal", tiny_clip, ["melanoma", "nevus"], {"concepts": {"melanoma": ["streaks"]}})
    path = save_bank(simple_bank("toy", {"melanoma": ["streaks"]}, source=PAPER), tmp_path / "b.json")
    with pytest.raises(ConfigError, match="no class 'nevus'.*class_map"):
        create_method("deal", tiny_clip, ["melanoma", "nevus"], {"bank": str(path)})
    with pytest.raises(ConfigError, match="heatmap"):
        make_deal(tiny_clip, {"heatmap": "lime"})
    with pytest.raises(ConfigError, match="single-label"):
        create_method("deal", tiny_clip, list(CONCEPTS), {"concepts": CONCEPTS}, multilabel=True)
    with pytest.raises(ConfigError, match="context length.*use fewer or shorter concepts \\(n_concepts=0\\)"):
        create_method("deal", tiny_clip, ["melanoma"], {"concepts": {"melanoma": ["dark dots"] * 20}, "n_concepts": 0})
    with pytest.raises(ConfigError, match="n_ctx=0") as err:  # not a length error: no concept hint
        create_method("deal", tiny_clip, ["melanoma"], {"concepts": {"melanoma": ["streaks"]}, "ctx_init": "",
                                                        "n_ctx": 0})
    assert "concepts" not in str(err.value)


def test_a_category_prompt_filling_the_context_exactly_is_accepted(tiny_clip):
    # tiny-clip: 32 tokens; "<sot> an image of melanoma with d0, ..., d6, and dark dots . <eot>":
    # 3 context + melanoma with (2) + 7 x "dN," (3 each) + and dark dots (3) + "." + start/end = 32
    concepts = [f"d{i}" for i in range(7)]
    method = create_method("deal", tiny_clip, ["melanoma"],
                           {"concepts": {"melanoma": concepts + ["dark dots"]}, "n_concepts": 0})
    assert int(method.prompt.attention_mask[0].sum()) == tiny_clip.context_length == 32
    assert method.prompt_texts()[0] == "An image of melanoma with d0, d1, d2, d3, d4, d5, d6, and dark dots."
    words = tiny_clip.tokenizer.convert_ids_to_tokens(method.prompt.input_ids[0, -4:].tolist())
    assert words == ["dark", "dots", ".", "<eot>"]  # nothing cut
    with pytest.raises(ConfigError, match="the prompt needs 33 tokens .*but only 32 are available.*n_concepts=0"):
        create_method("deal", tiny_clip, ["melanoma"],
                      {"concepts": {"melanoma": concepts + ["dark blue dots"]}, "n_concepts": 0})


def test_no_default_bank_on_another_datasets_classes(tiny_clip):
    """The PH2 criteria are the default on the PH2 dataset only: on any other dataset (here one whose
    classes happen to be PH2's) DEAL requires the bank, naming the option."""
    from types import SimpleNamespace

    ph2_classes = ["common nevus", "atypical nevus", "melanoma"]
    with pytest.raises(ConfigError, match="set bank .*PH2 criteria are the default on PH2 only"):
        create_method("deal", tiny_clip, ph2_classes, dataset=SimpleNamespace(name="shapes"))
    method = create_method("deal", tiny_clip, ["circle", "square"], {"bank": "", "concepts": {
        "circle": ["round edge"], "square": ["four corners"]}}, dataset=SimpleNamespace(name="shapes"))
    assert method.config.bank == "" and method.concept_lists.sources == {"circle": "given", "square": "given"}


@pytest.mark.shared_data
def test_ph2_uses_the_ph2_criteria_bank(tiny_clip, ph2):
    lists = resolve_concepts(ph2.classnames, bank="ph2", top_k=6)
    assert lists.concepts[0][:2] == ["typical pigment network", "symmetric shape"]
    assert lists.counts == [5, 6, 6]
    assert "blue-whitish veil" in lists.concepts[2]


def test_ph2_concepts_can_exclude_the_test_images(ph2):
    # run_experiment passes the test ids as knowledge_exclude; DEAL hands them to the bank
    from conceptclip.data import holdout_split
    from conceptclip.data.ph2 import ph2_dir
    from conceptclip.knowledge.skin import ph2_bank

    pools = holdout_split(ph2)
    known = pools.parts["train"] + pools.parts["val"]
    lists = resolve_concepts(ph2.classnames, bank="ph2", top_k=6, bank_exclude=pools.tested_ids())
    subset = ph2_bank(ph2_dir() / "labels.csv", ids=known)
    assert lists.concepts == [subset.phrases(c)[:6] for c in ph2.classnames]
    everything = resolve_concepts(ph2.classnames, bank="ph2", top_k=6)
    assert lists.concepts != everything.concepts  # the 60 test images did change the melanoma list
    # ids of another dataset (own images mapped onto the PH2 bank) exclude nothing
    other = resolve_concepts(ph2.classnames, bank="ph2", top_k=6, bank_exclude=["melanoma/1.png", "nevus/2.png"])
    assert other.concepts == everything.concepts


def test_run_experiment_gives_methods_only_non_test_ids_for_knowledge(image_folder, tiny_clip, tmp_path, monkeypatch):
    import conceptclip.engine.run as run_module
    from conceptclip.data import FeatureCache, from_folder, holdout_split

    seen = {}
    real = run_module.create_method

    def recording(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(run_module, "create_method", recording)
    ds = from_folder(image_folder)
    split = holdout_split(ds)
    run_module.run_experiment("coop", ds, split, tiny_clip, tmp_path / "run", cache=FeatureCache(tmp_path / "c"),
                              method_config={"n_ctx": 2}, train_config={"epochs": 1, "progress": False})
    assert sorted(seen["knowledge_exclude"]) == sorted(split.parts["test"])
    assert not set(seen["knowledge_exclude"]) & set(split.parts["train"] + split.parts["val"])

    from conceptclip.engine.load import load_run

    # a reloaded run excludes the same images (read back from its split.json), so it builds the same concept lists
    assert load_run(tmp_path / "run")[0].context["knowledge_exclude"] == seen["knowledge_exclude"]


def test_contributions_sum_to_the_concept_averaged_logits(tiny_clip):
    method = make_deal(tiny_clip)
    batch = token_batch(tiny_clip.embed_dim)
    with torch.no_grad():
        contrib = method.concept_contributions(batch)
        text = method.all_text_features()
        x = F.normalize(method.adapter(batch["features"]), dim=-1)
        s = tiny_clip.logit_scale
        # nevus (class 1) has two concepts, rows 3 and 4 of the concept prompts (after the 3 category prompts)
        torch.testing.assert_close(contrib[:, 1, 0], s * x @ text[3 + 3] / 2)
        assert contrib[:, 1, 2].abs().max() == 0  # padding contributes nothing
        torch.testing.assert_close(method.concept_averaged_logits(batch), contrib.sum(-1))
        torch.testing.assert_close(method.concept_scores(batch), x @ text[3:].t(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(method.logits(batch), s * x @ text[:3].t())


@pytest.mark.parametrize("mode", ["raw", "template"])
def test_similarity_heatmaps_are_adapted_patch_text_similarities(tiny_clip, mode):
    method = make_deal(tiny_clip, {"heatmap": "similarity", "map_norm": "minmax", "explain_prompts": mode})
    batch = token_batch(tiny_clip.embed_dim)
    maps = method.concept_maps(batch, batch["labels"], create_graph=True)
    assert maps.concepts.requires_grad
    texts = list(CONCEPTS) + [x for p in CONCEPTS.values() for x in p]  # raw class names, raw phrases
    with torch.no_grad():
        text = F.normalize(tiny_clip.encode_texts(texts), dim=-1) if mode == "raw" else method.all_text_features()
        sims = similarity_maps(method.adapter(batch["patches"]), text, grid=(4, 4))
    i = 1  # a nevus image: category prompt 1, concept prompts 3 + (3, 4)
    torch.testing.assert_close(maps.category[i].detach(), sims[i, 1])
    torch.testing.assert_close(maps.concepts[i, :2].detach(), sims[i, [6, 7]])
    terms = method.loss(batch)
    assert float(terms["r_disen"]) < 0 and float(terms["r_local"]) > 0


@pytest.mark.parametrize("explainer", ["gradcam", "chefer"])
def test_explain_on_a_vit_maps_the_raw_category_name_and_concept_phrases(tiny_clip, explainer):
    """Default: the maps explain s cos(f'(x), t) for t the raw class name and each raw concept phrase."""
    from conceptclip.explain import gradcam_for, relevance_for
    from conceptclip.explain.targets import ModelOutput

    method = make_deal(tiny_clip).eval()
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    classes = torch.tensor([0, 1, 2])
    out = method.heat_maps(pixels, classes, explainer=explainer)
    texts = list(CONCEPTS) + [x for p in CONCEPTS.values() for x in p]
    with torch.no_grad():
        raw = F.normalize(tiny_clip.encode_texts(texts), dim=-1)

    def forward(x: torch.Tensor) -> ModelOutput:
        feats = tiny_clip.encode_image(x)
        return ModelOutput(logits=tiny_clip.logit_scale * F.normalize(method.adapter(feats.global_), dim=-1) @ raw.t(),
                           features=feats)

    tool = relevance_for(tiny_clip, forward) if explainer == "chefer" else gradcam_for(tiny_clip, forward)
    # targets: the class name (row c), then the class's concept phrases (rows 3 + its flat concept rows)
    concept_rows = [[3 + r for r in rows] for rows in ([0, 1, 2], [3, 4, 3], [5, 6, 7])]
    targets = [ClassTarget(classes)] + [ClassTarget(torch.tensor([concept_rows[c][k] for c in classes.tolist()]))
                                        for k in range(3)]
    ref = tool.compute(pixels, targets).maps
    torch.testing.assert_close(out.category, ref[:, 0], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out.concepts, ref[:, 1:], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("explainer", ["gradcam", "chefer"])
def test_explain_on_a_vit_with_template_prompts(tiny_clip, explainer):
    method = make_deal(tiny_clip, {"explain_prompts": "template"}).eval()
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    classes = torch.tensor([0, 1, 2])
    out = method.heat_maps(pixels, classes, explainer=explainer)
    assert out.concepts.shape == (3, 3, 4, 4) and out.category.shape == (3, 4, 4)
    assert out.mask.tolist() == method.concept_mask.tolist()
    assert torch.isfinite(out.concepts).all() and float(out.concepts.abs().sum()) > 0
    # the category map is the explainer's map of the class logit, as for any other method
    ref = explain_method(method, pixels, [ClassTarget(classes)], explainer=explainer).maps[:, 0]
    torch.testing.assert_close(out.category, ref, rtol=1e-4, atol=1e-6)
    # default: the predicted class
    with torch.no_grad():
        pred = method.logits({"features": tiny_clip.encode_image(pixels).global_}).argmax(1)
    assert method.heat_maps(pixels, explainer=explainer).classes.tolist() == pred.tolist()


def test_runs_through_the_engine_and_reloads(tiny_clip, image_folder, tmp_path):
    from conceptclip.data import FeatureCache, fewshot_split, holdout_split, load_dataset
    from conceptclip.engine import run_experiment
    from conceptclip.engine.load import load_run

    ds = load_dataset(image_folder)
    split = fewshot_split(ds, holdout_split(ds), 2, 1)
    concepts = {"cat": ["small", "dark"], "dog": ["large"], "fish": ["round", "smooth"]}
    run = tmp_path / "run"
    metrics = run_experiment("deal", ds, split, tiny_clip, run, cache=FeatureCache(tmp_path / "cache"),
                             method_config={"concepts": concepts},
                             train_config={"epochs": 2, "batch_size": 4, "progress": False})
    hist = [line for line in (run / "history.jsonl").read_text().splitlines()]
    assert len(hist) == 2 and '"r_disen"' in hist[0] and '"r_local"' in hist[0]
    method, cfg = load_run(run)
    assert cfg["method"]["config"]["concepts"] == concepts
    assert method.concept_lists.concepts == [["small", "dark"], ["large"], ["round", "smooth"]]
    assert 0.0 <= metrics["test"]["accuracy"] <= 1.0


def test_lite_training_maps_are_the_centred_pixel_gradcam(lite, pil_images):
    """On `lite` the global feature is the mean patch token, so the training-time Grad-CAM on the
    adapted tokens is the pixel Grad-CAM (feature-map layer, before its ReLU) minus its spatial mean,
    then ReLU: the two differ only by the image head's bias seen through the gradient."""
    from conceptclip.explain import gradcam_for

    method = make_deal(lite, perturb=False)
    with torch.no_grad():
        g = torch.Generator().manual_seed(4)
        method.adapter.linear.weight.add_(0.01 * torch.randn(method.adapter.linear.weight.shape, generator=g))
    pixels = lite.preprocess(pil_images[:2])
    classes = torch.tensor([0, 1])
    with torch.no_grad():
        feats = lite.encode_image(pixels, patches=True)
    torch.testing.assert_close(feats.global_, feats.patches.mean(1), rtol=1e-4, atol=1e-5)
    tokens = method.concept_maps({"features": feats.global_, "patches": feats.patches}, classes)
    cam = gradcam_for(lite, method.pixel_forward())
    cam.relu = False
    pre = cam.compute(pixels, method._targets(classes)).maps  # (2, 1 + Kmax, 7, 7)
    expected = torch.relu(pre - pre.mean((-2, -1), keepdim=True))
    scale = float(expected.abs().max())
    torch.testing.assert_close(tokens.category, expected[:, 0], rtol=1e-3, atol=1e-3 * scale)
    torch.testing.assert_close(tokens.concepts, expected[:, 1:], rtol=1e-3, atol=1e-3 * scale)
    # and `heat_maps` is that pixel Grad-CAM with its ReLU
    torch.testing.assert_close(method.heat_maps(pixels, classes).concepts, torch.relu(pre[:, 1:]), rtol=1e-4,
                               atol=1e-4 * scale)


def test_explain_ranks_the_predicted_class_concepts_by_contribution(tiny_clip):
    method = make_deal(tiny_clip).eval()
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        feats = tiny_clip.encode_image(pixels, patches=True)
    batch = {"features": feats.global_, "patches": feats.patches, "pixels": pixels}
    out = method.explain(batch)
    pred = method.logits(batch).argmax(1)
    assert out["predicted"].tolist() == pred.tolist()
    for i, c in enumerate(pred.tolist()):
        names = CONCEPTS[method.classnames[c]]
        values = out["contributions"][i, c, : len(names)]
        best = [names[j] for j in values.argsort(descending=True).tolist()]
        assert [n for n, _ in out["concepts"][i]] == best
        assert out["rationale"][i] == f"{method.classnames[c]}, with " + ", ".join(best[:3])
    assert out["concept_maps"].shape == (2, 3, 4, 4)
    torch.testing.assert_close(out["concept_maps"], method.heat_maps(pixels, pred).concepts)
    assert "concept_maps" not in method.explain({"features": feats.global_})
