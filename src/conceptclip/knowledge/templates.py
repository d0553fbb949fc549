"""Prompt templates as data: the text with named slots and how a list fills a slot.

A template's `{concepts}`/`{rationales}` slot takes a list joined by `joiner`, with `last_joiner`
before the final item (so ECOR's "There are {r1} and {r2} in the photo." and XCoOp's comma list
are the same mechanism). Templates load from and dump to JSON, so users can swap them without
code.
"""

from __future__ import annotations

import json
import os
import string
from dataclasses import asdict, dataclass
from pathlib import Path

from conceptclip.errors import KnowledgeError


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    text: str
    joiner: str = ", "
    last_joiner: str | None = None  # None: same as joiner
    reference: str = ""

    @property
    def slots(self) -> set[str]:
        return {f for _, f, _, _ in string.Formatter().parse(self.text) if f}

    def join(self, items: list[str]) -> str:
        items = [i.strip() for i in items]
        if len(items) <= 1:
            return "".join(items)
        last = self.joiner if self.last_joiner is None else self.last_joiner
        return self.joiner.join(items[:-1]) + last + items[-1]

    def fill(self, **values: str | list[str]) -> str:
        missing = self.slots - set(values)
        if missing:
            raise KnowledgeError(f"template {self.name!r}: missing value for slot(s) {sorted(missing)}")
        filled = {k: self.join(v) if isinstance(v, list) else v for k, v in values.items()}
        return self.text.format(**filled)


XCOOP_PAPER = PromptTemplate(
    "xcoop_paper", "a photo of {classname}, with {concepts}.", last_joiner=", and ",
    reference="XCoOp Sec. 2.1 example clinical prompt",
)
XCOOP = PromptTemplate(
    "xcoop", "a {modality} image of {classname}, which has {concepts}.",
    reference="XCoOp clinical prompt, our earlier reading with the modality (clinical_template='modality')",
)
ECOR_RATIONALE = PromptTemplate(
    "ecor_rationale", "There are {rationales} in the photo.", joiner=" and ",
    reference="ECOR rationale prompt for P(R | I)",
)
ECOR_CATEGORY = PromptTemplate(
    "ecor_category", "This is a photo of a {classname} because there is {rationale}.",
    reference="ECOR category-given-rationale prompt for P(c | R, I)",
)
DEAL = PromptTemplate("deal", "An image of {classname} with {concepts}.", reference="DEAL prompt")
CLASS_ONLY = PromptTemplate("class_only", "a photo of a {classname}.", reference="CLIP/CoOp class prompt")
DESCRIPTOR = PromptTemplate(
    "descriptor", "{classname}, which has {concept}.",
    reference="one prompt per concept (Menon & Vondrick descriptor style), for ensembles of concept banks",
)
REPORT_LOCATION = PromptTemplate(
    "report_location", "{finding} It is located at {location}.",
    reference="knowledge injection of a location (MedKLIP/RC-TPL style)",
)

BUILTIN_TEMPLATES: dict[str, PromptTemplate] = {
    t.name: t for t in (XCOOP_PAPER, XCOOP, ECOR_RATIONALE, ECOR_CATEGORY, DEAL, CLASS_ONLY, DESCRIPTOR, REPORT_LOCATION)
}


def get_template(name: str) -> PromptTemplate:
    if name not in BUILTIN_TEMPLATES:
        raise KnowledgeError(f"unknown template {name!r}; known: {', '.join(BUILTIN_TEMPLATES)}")
    return BUILTIN_TEMPLATES[name]


def load_templates(path: str | os.PathLike) -> dict[str, PromptTemplate]:
    """Read `{name: {"text": ..., "joiner": ..., "last_joiner": ..., "reference": ...}}`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise KnowledgeError(f"{path}: cannot read templates ({exc})") from None
    if not isinstance(data, dict):
        raise KnowledgeError(f"{path}: $: expected an object {{name: template}}")
    out = {}
    for name, raw in data.items():
        if not isinstance(raw, dict) or not isinstance(raw.get("text"), str) or not raw["text"].strip():
            raise KnowledgeError(f"{path}: $.{name}.text: expected a non-empty string")
        extra = set(raw) - {"text", "joiner", "last_joiner", "reference"}
        if extra:
            raise KnowledgeError(f"{path}: $.{name}: unexpected key(s) {sorted(extra)}")
        try:
            list(string.Formatter().parse(raw["text"]))
        except ValueError as exc:
            raise KnowledgeError(f"{path}: $.{name}.text: bad format string ({exc})") from None
        out[name] = PromptTemplate(name=name, **raw)
    return out


def dump_templates(templates: dict[str, PromptTemplate]) -> str:
    return json.dumps({k: {f: v for f, v in asdict(t).items() if f != "name"} for k, t in templates.items()},
                      indent=2, ensure_ascii=False) + "\n"
