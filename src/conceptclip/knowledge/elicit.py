"""LLM elicitation of concept banks: prompt templates (as data) for descriptors, chain-of-thought
concepts (DEAL) and rationales (ECOR/DROR), and `elicit_bank` which asks once per class through a
cached `ChatClient` and records model, prompt and date as provenance."""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass

from conceptclip.errors import KnowledgeError
from conceptclip.knowledge.llm import ChatClient, parse_json_answer, string_list
from conceptclip.knowledge.schema import ClassEntry, Concept, ConceptBank, Provenance


@dataclass(frozen=True)
class ElicitationTemplate:
    name: str
    system: str
    user: str  # slots: {classname}, {modality}, {n}, {others}
    answer_key: str  # the JSON key holding the list
    field: str  # where each item goes: "phrase" or "rationale" (the rationale also becomes the phrase)


ELICITATION_TEMPLATES: dict[str, ElicitationTemplate] = {
    "descriptors": ElicitationTemplate(
        "descriptors",
        "You are an expert in {modality} imaging. Answer with JSON only.",
        "List {n} short visual descriptors (noun phrases of at most six words) that help recognise "
        "{classname} in a {modality} image. Answer as {{\"concepts\": [\"...\", ...]}}.",
        "concepts", "phrase",
    ),
    "cot_concepts": ElicitationTemplate(
        "cot_concepts",
        "You are an expert in {modality} imaging. Think step by step, then answer with JSON only.",
        "Which visual features distinguish {classname} from {others} in {modality} images? First reason "
        "briefly about the anatomy and appearance, then give {n} concise visual concepts. Answer as "
        "{{\"reasoning\": \"...\", \"concepts\": [\"...\", ...]}}.",
        "concepts", "phrase",
    ),
    "rationales": ElicitationTemplate(
        "rationales",
        "You are an expert in {modality} imaging. Answer with JSON only.",
        "Give {n} visual rationales for recognising {classname} in a {modality} image: each a short noun "
        "phrase naming visible evidence, usable in \"This is {classname} because there is <rationale>.\" "
        "Answer as {{\"rationales\": [\"...\", ...]}}.",
        "rationales", "rationale",
    ),
}


def build_messages(template: ElicitationTemplate, classname: str, classes: list[str], modality: str,
                   n: int) -> list[dict[str, str]]:
    others = ", ".join(c for c in classes if c != classname) or "other findings"
    slots = {"classname": classname, "modality": modality, "n": n, "others": others}
    return [{"role": "system", "content": template.system.format(**slots)},
            {"role": "user", "content": template.user.format(**slots)}]


def elicit_bank(
    client: ChatClient, classes: list[str], template: str | ElicitationTemplate = "descriptors",
    modality: str = "medical", n: int = 6, name: str | None = None, date: str | None = None,
) -> ConceptBank:
    """Ask the LLM once per class and build a bank; provenance records the model, the template
    (system + user text with slots) and the date (today, UTC, unless given)."""
    tpl = ELICITATION_TEMPLATES.get(template) if isinstance(template, str) else template
    if tpl is None:
        raise KnowledgeError(f"unknown elicitation template {template!r}; known: {', '.join(ELICITATION_TEMPLATES)}")
    if not classes or len(set(classes)) != len(classes):
        raise KnowledgeError(f"classes: expected distinct class names, got {classes}")
    if n < 1:
        raise KnowledgeError(f"n: expected a positive integer, got {n}")
    out = {}
    for cname in classes:
        answer = client.chat(build_messages(tpl, cname, classes, modality, n))
        what = f"LLM answer of {client.config.model} for class {cname!r}"
        items = list(dict.fromkeys(string_list(parse_json_answer(answer, dict, what), tpl.answer_key, what)))
        if tpl.field == "rationale":
            concepts = tuple(Concept(phrase=x, rationale=x, source="llm") for x in items)
        else:
            concepts = tuple(Concept(phrase=x, source="llm") for x in items)
        out[cname] = ClassEntry(concepts)
    prov = Provenance(
        kind="llm", citation=f"elicited via {client.url} with template {tpl.name!r}", model=client.config.model,
        prompt=f"[system] {tpl.system}\n[user] {tpl.user}",
        date=date or _dt.datetime.now(_dt.timezone.utc).date().isoformat(),
    )
    return ConceptBank(name=name or f"elicited/{tpl.name}", sources={"llm": prov}, classes=out, kind="concepts",
                       description=f"{tpl.name} for {modality} images, {n} per class")
