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
from conceptclip.knowledge.resolve import check_class_map, load_bank_any, match_classes, resolve_bank
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


def bank_prompts(bank) -> dict[str, list[str]]:
    """{class: prompts}: a `prompts` bank as written, a `concepts` bank as "{class}, which has {concept}."."""
    if bank.kind == "prompts":
        return bank.as_dict_of_lists()
    return {c: [f"{c.replace('_', ' ')}, which has {p}." for p in bank.phrases(c)] for c in bank.classes}


def resolve_ensembles(classnames: Sequence[str], bank: str = "", class_map: Mapping[str, str] | None = None,
                      templates: Sequence[str] = FALLBACK_TEMPLATES, clean: bool = True,
                      all_classes: Sequence[str] | None = None, exclude: Collection[str] | None = None) -> Ensembles:
    """Prompts per class: from `bank` (class names matched by `knowledge.resolve.match_name`, or through
    `class_map` {class: bank class}), else the `templates` filled with the class name. `class_map`
    keys must be among `all_classes` (default `classnames`; the dataset's classes when a method
    sees only its base or novel half). `exclude`: image ids a bank counted from per-image
    annotations ("ph2") must not count (a run's test images, `load_bank_any`)."""
    known = list(all_classes) if all_classes is not None else list(classnames)
    class_map = check_class_map(class_map, known)
    lists: dict[str, list[str]] = {}
    targets: list[str | None] = [None] * len(classnames)
    removed: dict[str, int] = {}
    bank_name = ""
    if bank:
        b = load_bank_any(bank, exclude)
        bank_name = b.name
        if clean:
            from conceptclip.knowledge.prune import PruneConfig, prune_bank

            b, report = prune_bank(b, PruneConfig(near_duplicates=False, outliers=False))
            removed = {k: v for k, v in report.counts().items() if v}
        lists = bank_prompts(b)
        missing = sorted(v for v, t in zip(class_map.values(), match_classes(list(class_map.values()), lists)) if t is None)
        if missing:
            raise ConfigError(f"class_map targets {missing} are not classes of bank {bank_name!r} "
                              f"(its classes: {', '.join(lists)})")
        targets = resolve_bank(bank, classnames, class_map=class_map, bank=b).targets
    prompts, sources = [], {}
    for c, hit in zip(classnames, targets):
        target = class_map.get(c, c)
        if hit is not None and lists[hit]:
            prompts.append(list(lists[hit]))
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
