"""Prompt builders and templates-as-data."""

from __future__ import annotations

import pytest

from conceptclip.errors import KnowledgeError
from conceptclip.knowledge.prompts import (
    category_rationale_prompts, clinical_concept_prompts, deal_prompts, ensemble_prompts, rationale_prompt,
    select_concepts,
)
from conceptclip.knowledge.schema import ClassEntry, Concept, ConceptBank, Provenance, simple_bank
from conceptclip.knowledge.templates import (
    BUILTIN_TEMPLATES, ECOR_RATIONALE, PromptTemplate, dump_templates, load_templates,
)

SRC = {"ph2": Provenance(kind="annotation", citation="PH2")}


def skin_bank() -> ConceptBank:
    return ConceptBank(name="t", sources=SRC, classes={
        "melanoma": ClassEntry((Concept("atypical pigment network", "ph2", frequency=0.975),
                                Concept("blue-whitish veil", "ph2", frequency=0.75),
                                Concept("irregular streaks", "ph2", frequency=0.325),
                                Concept("symmetric shape", "ph2", polarity="negative"))),
        "common_nevus": ClassEntry((Concept("typical pigment network", "ph2", frequency=1.0),)),
    })


def test_xcoop_clinical_concept_prompt_is_the_papers_by_default():
    """XCoOp Sec. 2.1: "a photo of melanoma, with irregular pigment network, ..., and vascular structures." """
    prompts = clinical_concept_prompts(skin_bank())
    assert prompts["melanoma"] == "a photo of melanoma, with atypical pigment network, blue-whitish veil, and irregular streaks."
    assert prompts["common_nevus"] == "a photo of common nevus, with typical pigment network."


def test_xcoop_clinical_concept_prompt_with_a_modality_is_our_earlier_form():
    prompts = clinical_concept_prompts(skin_bank(), modality="dermoscopy")
    assert prompts["melanoma"] == ("a dermoscopy image of melanoma, which has atypical pigment network, "
                                   "blue-whitish veil, irregular streaks.")  # the negative entry is left out
    assert prompts["common_nevus"] == "a dermoscopy image of common nevus, which has typical pigment network."
    assert clinical_concept_prompts(skin_bank(), "dermoscopy", min_frequency=0.5)["melanoma"].endswith("blue-whitish veil.")
    assert clinical_concept_prompts(skin_bank(), modality="clinical", top_k=1)["melanoma"] == \
        "a clinical image of melanoma, which has atypical pigment network."


def test_ecor_prompts():
    assert rationale_prompt(["blue-whitish veil", "irregular streaks"]) == \
        "There are blue-whitish veil and irregular streaks in the photo."
    assert rationale_prompt(["a", "b", "c"]) == "There are a and b and c in the photo."
    assert category_rationale_prompts(skin_bank(), top_k=2)["melanoma"] == [
        "This is a photo of a melanoma because there is atypical pigment network.",
        "This is a photo of a melanoma because there is blue-whitish veil."]
    with pytest.raises(KnowledgeError, match="at least one rationale"):
        rationale_prompt([])


def test_deal_and_ensembles():
    bank = skin_bank()
    assert deal_prompts(bank, top_k=2)["melanoma"] == "An image of melanoma with atypical pigment network, blue-whitish veil."
    ens = ensemble_prompts(bank)
    assert ens["common_nevus"] == ["common nevus, which has typical pigment network."]
    prompts_bank = simple_bank("p", {"a": ["full sentence one.", "full sentence two."]}, SRC["ph2"], kind="prompts")
    assert ensemble_prompts(prompts_bank) == {"a": ["full sentence one.", "full sentence two."]}


def test_template_fill_join_and_errors():
    t = PromptTemplate("x", "{classname}: {concepts}", joiner=", ", last_joiner=" and ")
    assert t.fill(classname="c", concepts=["a", "b", "c"]) == "c: a, b and c"
    assert t.fill(classname="c", concepts=["a"]) == "c: a"
    with pytest.raises(KnowledgeError, match=r"missing value for slot\(s\) \['concepts'\]"):
        t.fill(classname="c")
    with pytest.raises(KnowledgeError, match="no class 'x'"):
        select_concepts(skin_bank(), "x")


def test_templates_round_trip_through_json(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(dump_templates(BUILTIN_TEMPLATES))
    assert load_templates(path) == BUILTIN_TEMPLATES
    assert load_templates(path)["ecor_rationale"] == ECOR_RATIONALE
    path.write_text('{"bad": {"text": "a {b"}}')
    with pytest.raises(KnowledgeError, match="bad format string"):
        load_templates(path)
    path.write_text('{"bad": {"text": "ok", "extra": 1}}')
    with pytest.raises(KnowledgeError, match="unexpected key"):
        load_templates(path)
