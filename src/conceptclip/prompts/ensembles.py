"""Per-class prompt ensembles: resolve them from a knowledge bank (LLM prompts such as BiomedCoOp's,
or a concept bank), fall back to templates for classes the bank lacks, and encode them once.

Ensembles are data with provenance: `resolve_ensembles` says, per class, where its prompts came
from and what the clean-up (`knowledge.prune.prune_bank`: format checks and exact duplicates)
removed, so a results folder can record it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Collection, Mapping, Sequence

import torch
import torch.nn.functional as F

from conceptclip.backbones.base import Backbone
from conceptclip.errors import ConfigError
from conceptclip.prompts.text_features import encode_prompts

# CLIP-style templates for classes without bank prompts ({} = class name).
FALLBACK_TEMPLATES = ("a photo of a {}.", "an image of a {}.", "a close-up photo of a {}.",
                      "a medical image showing a {}.")


@dataclass
class Ensembles:
    """`prompts[i]` is the prompt list of class `classnames[i]`; `sources[c]` says where it came from."""

    classnames: list[str]
    prompts: list[list[str]]
    sources: dict[str, str] = field(default_factory=dict)
    removed: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict:
        return {"sources": dict(self.sources), "prompts_per_class": {c: len(p) for c, p in zip(self.classnames, self.prompts)},
                "removed_by_cleanup": dict(self.removed)}


def _key(name: str) -> str:
    return " ".join(name.replace("_", " ").lower().split())


def load_bank_any(spec: str, exclude: Collection[str] | None = None):
    """A `ConceptBank` from a shared-bank name ("biomedcoop/BUSI") or a bank JSON file.

    `exclude`: image ids (a run's test images) that a bank counted from per-image annotations ("ph2")
    must not count, so test images never shape the concept lists; ids of other datasets exclude
    nothing, and banks that do not count images ignore it."""
    from pathlib import Path

    from conceptclip.knowledge.loaders import load_shared_bank
    from conceptclip.knowledge.schema import load_bank

    if spec.endswith(".json") or Path(spec).is_file():
        return load_bank(spec)
    if spec == "ph2" and exclude:
        from conceptclip.data.ph2 import ph2_dir
        from conceptclip.knowledge.skin import ph2_bank, ph2_diagnoses

        labels = ph2_dir() / "labels.csv"
        drop = set(exclude)
        return ph2_bank(labels, ids=[i for i in ph2_diagnoses(labels) if i not in drop])
    return load_shared_bank(spec)


def bank_prompts(bank) -> dict[str, list[str]]:
    """{class: prompts}: a `prompts` bank as written, a `concepts` bank as "{class}, which has {concept}."."""
    if bank.kind == "prompts":
        return bank.as_dict_of_lists()
    return {c: [f"{c.replace('_', ' ')}, which has {p}." for p in bank.phrases(c)] for c in bank.classes}


def resolve_ensembles(classnames: Sequence[str], bank: str = "", class_map: Mapping[str, str] | None = None,
                      templates: Sequence[str] = FALLBACK_TEMPLATES, clean: bool = True,
                      all_classes: Sequence[str] | None = None) -> Ensembles:
    """Prompts per class: from `bank` (matched by name, case- and underscore-insensitive, or through
    `class_map` {class: bank class}), else the `templates` filled with the class name. `class_map`
    keys must be among `all_classes` (default `classnames`; the dataset's classes when a method
    sees only its base or novel half)."""
    class_map = dict(class_map or {})
    known = list(all_classes) if all_classes is not None else list(classnames)
    unknown = sorted(set(class_map) - set(known))
    if unknown:
        raise ConfigError(f"class_map names classes {unknown} that are not among {known}")
    by_key: dict[str, list[str]] = {}
    removed: dict[str, int] = {}
    bank_name = ""
    if bank:
        b = load_bank_any(bank)
        bank_name = b.name
        if clean:
            from conceptclip.knowledge.prune import PruneConfig, prune_bank

            b, report = prune_bank(b, PruneConfig(near_duplicates=False, outliers=False))
            removed = {k: v for k, v in report.counts().items() if v}
        lists = bank_prompts(b)
        by_key = {_key(c): p for c, p in lists.items()}
        missing = sorted(v for v in class_map.values() if _key(v) not in by_key)
        if missing:
            raise ConfigError(f"class_map targets {missing} are not classes of bank {bank_name!r} "
                              f"(its classes: {', '.join(lists)})")
    prompts, sources = [], {}
    for c in classnames:
        target = class_map.get(c, c)
        if _key(target) in by_key and by_key[_key(target)]:
            prompts.append(list(by_key[_key(target)]))
            sources[c] = f"bank {bank_name}: {target}"
        else:
            prompts.append([t.format(c.replace("_", " ")) for t in templates])
            sources[c] = f"templates ({len(templates)})"
    return Ensembles(list(classnames), prompts, sources, removed)


@torch.no_grad()
def encode_ensembles(backbone: Backbone, prompts: Sequence[Sequence[str]]) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised features (C, P, D) of every class's prompts, zero-padded to the longest
    ensemble P, and the mask (C, P) of real prompts."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ConfigError("encode_ensembles: every class needs at least one prompt")
    flat = [t for p in prompts for t in p]
    feats = encode_prompts(backbone, flat)
    p_max = max(len(p) for p in prompts)
    out = feats.new_zeros(len(prompts), p_max, feats.shape[-1])
    mask = torch.zeros(len(prompts), p_max, dtype=torch.bool)
    start = 0
    for i, p in enumerate(prompts):
        out[i, :len(p)] = feats[start:start + len(p)]
        mask[i, :len(p)] = True
        start += len(p)
    return out, mask


def ensemble_mean(feats: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-class ensemble direction normalise(mean_j t_cj) (C, D) over the real prompts only
    (CLIP's prompt ensembling, applied to padded (C, P, D) features)."""
    m = mask.to(feats.dtype).unsqueeze(-1)
    return F.normalize((feats * m).sum(1) / m.sum(1).clamp_min(1.0), dim=-1)
