"""XCoOp's clinical knowledge: per class its clinical concepts (from a concept bank, through the shared
resolver `knowledge.resolve`) and its clinical prompt Q_d (Bie et al., IJCAI 2024, Sec. 2.1: "a photo of
melanoma, with irregular pigment network, ..., and vascular structures."), and the knowledge
interventions that replace the concepts (everyday-object phrases, "irrelevant").

The functions read an XCoOp config (`methods.xcoop.XCoOpConfig`): `concept_prompts`, `bank`, `class_map`,
`clinical_template`, `modality`, `top_k`, `min_frequency` and `knowledge_seed`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Sequence

from conceptclip.errors import ConfigError
# the clinical prompt of the paper's Sec. 2.1 example, and our earlier one (clinical_template="modality")
from conceptclip.knowledge.templates import XCOOP as MODALITY_TEMPLATE
from conceptclip.knowledge.templates import XCOOP_PAPER as PAPER_TEMPLATE

# Knowledge intervention "irrelevant": everyday-object phrases in place of the clinical concepts.
IRRELEVANT_CONCEPTS = (
    "four wheels", "a steering wheel", "a wooden handle", "green leaves", "a brick wall", "a cloudy sky",
    "a metal fork", "a paper cup", "a red roof", "a leather ball", "a striped shirt", "a glass window",
    "a rubber tyre", "a ceramic plate", "a sandy beach", "a wooden fence", "a plastic bottle", "a violin bow",
)


@dataclass
class Knowledge:
    """Per class: its clinical concepts (with bank frequencies where known) and its clinical prompt."""

    concepts: dict[str, list[str]]
    frequency: dict[str, dict[str, float | None]]
    clinical_prompts: dict[str, str]
    source: str


def fill_clinical(config: Any, classname: str, concepts: list[str]) -> str:
    """The clinical prompt of a class from its concepts (`clinical_template`)."""
    from conceptclip.knowledge.prompts import display_name

    if config.clinical_template == "paper":
        return PAPER_TEMPLATE.fill(classname=display_name(classname), concepts=concepts)
    return MODALITY_TEMPLATE.fill(modality=config.modality, classname=display_name(classname), concepts=concepts)


def resolve_knowledge(config: Any, classnames: Sequence[str],
                      bank_exclude: Sequence[str] | None = None) -> Knowledge:
    """The clinical concepts and prompts of every class, from `concept_prompts` or the bank (a bank
    counted from per-image annotations never counts `bank_exclude`; `knowledge.resolve`)."""
    from conceptclip.knowledge.prompts import select_concepts

    if config.concept_prompts:
        missing = [c for c in classnames if not str(config.concept_prompts.get(c, "")).strip()]
        if missing:
            raise ConfigError(f"xcoop concept_prompts: no prompt for classes {missing}")
        return Knowledge({c: [] for c in classnames}, {c: {} for c in classnames},
                         {c: config.concept_prompts[c] for c in classnames}, "given prompts")
    from conceptclip.knowledge.resolve import default_bank, resolve_bank

    name = config.bank
    if not name:
        name = default_bank("concepts", classnames=[config.class_map.get(c, c) for c in classnames])
        if not name:
            raise ConfigError(f"xcoop needs clinical knowledge for classes {list(classnames)}: set bank=NAME or "
                              "bank=FILE.json (map names with class_map) or concept_prompts={class: prompt}; the "
                              "default bank 'ph2' is used only for PH2's classes (common nevus, atypical nevus, melanoma)")
    if config.clinical_template == "modality" and not config.modality.strip():
        raise ConfigError("xcoop clinical_template='modality' needs modality=... (e.g. dermoscopy)")
    resolved = resolve_bank(name, classnames, class_map=config.class_map, exclude=bank_exclude)
    bank = resolved.bank
    concepts, freq, prompts = {}, {}, {}
    for c, hit in zip(classnames, resolved.targets):
        key = config.class_map.get(c, c)
        if hit is None:
            raise ConfigError(f"xcoop bank {name!r}: no class {key!r} for dataset class {c!r} "
                              f"(bank classes: {', '.join(bank.classes)}; map them with class_map)")
        chosen = select_concepts(bank, hit, config.top_k or None, config.min_frequency or None)
        if not chosen:
            raise ConfigError(f"xcoop bank {name!r}: class {key!r} has no concepts left "
                              f"(top_k={config.top_k}, min_frequency={config.min_frequency})")
        concepts[c] = [x.phrase for x in chosen]
        freq[c] = {x.phrase: x.frequency for x in chosen}
        prompts[c] = fill_clinical(config, c, concepts[c])
    return Knowledge(concepts, freq, prompts, f"bank {bank.name!r} ({name})")


def irrelevant_prompts(knowledge: Knowledge, config: Any) -> dict[str, str]:
    """The clinical prompts with every class's concepts replaced by as many everyday-object phrases
    (seeded by `knowledge_seed`; the class name and template stay)."""
    rng = random.Random(config.knowledge_seed)
    out = {}
    for c, concepts in knowledge.concepts.items():
        n = max(1, len(concepts) or knowledge.clinical_prompts[c].count(",") + 1)
        out[c] = fill_clinical(config, c, rng.sample(IRRELEVANT_CONCEPTS, min(n, len(IRRELEVANT_CONCEPTS))))
    return out
