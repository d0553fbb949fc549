"""Prompt builders over concept banks: XCoOp clinical concept prompts, ECOR rationale prompts,
DEAL prompts and BiomedCoOp-style ensembles. Templates are data (`templates.py`)."""

from __future__ import annotations

from conceptclip.errors import KnowledgeError
from conceptclip.knowledge.schema import Concept, ConceptBank
from conceptclip.knowledge.templates import (
    DEAL, DESCRIPTOR, ECOR_CATEGORY, ECOR_RATIONALE, XCOOP, XCOOP_PAPER, PromptTemplate,
)


def display_name(class_name: str) -> str:
    """Class keys such as "apple_pie" read as "apple pie" in prompts."""
    return class_name.replace("_", " ").strip()


def select_concepts(
    bank: ConceptBank, class_name: str, top_k: int | None = None, min_frequency: float | None = None,
    polarity: str | None = "positive",
) -> list[Concept]:
    """The class's concepts in bank order, optionally only those with `frequency >= min_frequency`
    (entries without a frequency are kept), of one polarity, and at most `top_k`."""
    if class_name not in bank.classes:
        raise KnowledgeError(f"bank {bank.name!r}: no class {class_name!r} (classes: {', '.join(bank.classes)})")
    if top_k is not None and top_k < 1:
        raise KnowledgeError(f"top_k: expected a positive integer, got {top_k}")
    out = [
        c for c in bank.classes[class_name].concepts
        if (polarity is None or c.polarity == polarity)
        and (min_frequency is None or c.frequency is None or c.frequency >= min_frequency)
    ]
    return out[:top_k] if top_k is not None else out


def clinical_concept_prompts(
    bank: ConceptBank, modality: str | None = None, template: PromptTemplate | None = None,
    top_k: int | None = None, min_frequency: float | None = None,
) -> dict[str, str]:
    """XCoOp: one clinical prompt per class (concepts in bank order), as XCoOp builds it: by default the
    paper's Sec. 2.1 form, "a photo of melanoma, with atypical pigment network, ..., and blue-whitish
    veil."; with `modality`, our earlier form "a dermoscopy image of melanoma, which has ...";
    `template` overrides both."""
    if template is None:
        template = XCOOP if modality else XCOOP_PAPER
    out = {}
    for cname in bank.classes:
        phrases = [c.phrase for c in select_concepts(bank, cname, top_k, min_frequency)]
        if not phrases:
            raise KnowledgeError(f"bank {bank.name!r}: class {cname!r} has no concepts left for its prompt")
        out[cname] = template.fill(modality=modality or "", classname=display_name(cname), concepts=phrases)
    return out


def rationale_prompt(rationales: list[str], template: PromptTemplate = ECOR_RATIONALE) -> str:
    """ECOR P(R | I) prompt: "There are {r1} and {r2} in the photo." """
    if not rationales:
        raise KnowledgeError("rationale_prompt: needs at least one rationale")
    return template.fill(rationales=list(rationales))


def category_rationale_prompts(
    bank: ConceptBank, template: PromptTemplate = ECOR_CATEGORY, top_k: int | None = None,
    min_frequency: float | None = None,
) -> dict[str, list[str]]:
    """ECOR P(c | R, I) prompts, one per (class, rationale): "This is a photo of a melanoma
    because there is blue-whitish veil." The rationale is the concept phrase."""
    return {
        cname: [template.fill(classname=display_name(cname), rationale=c.phrase)
                for c in select_concepts(bank, cname, top_k, min_frequency)]
        for cname in bank.classes
    }


def deal_prompts(bank: ConceptBank, template: PromptTemplate = DEAL, top_k: int | None = None) -> dict[str, str]:
    """DEAL: "An image of {c} with {c1}, {c2}, ..." per class."""
    out = {}
    for cname in bank.classes:
        phrases = [c.phrase for c in select_concepts(bank, cname, top_k)]
        if not phrases:
            raise KnowledgeError(f"bank {bank.name!r}: class {cname!r} has no concepts for a DEAL prompt")
        out[cname] = template.fill(classname=display_name(cname), concepts=phrases)
    return out


def ensemble_prompts(bank: ConceptBank, template: PromptTemplate = DESCRIPTOR) -> dict[str, list[str]]:
    """Prompt ensemble per class (BiomedCoOp). A `prompts` bank is used as written; a `concepts`
    bank gets one prompt per concept ("melanoma, which has blue-whitish veil.")."""
    if bank.kind == "prompts":
        return bank.as_dict_of_lists()
    return {
        cname: [template.fill(classname=display_name(cname), concept=c.phrase) for c in bank.classes[cname].concepts]
        for cname in bank.classes
    }
