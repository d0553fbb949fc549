"""Knowledge intervention (XCoOp): edit the concept prompt set a prediction is built from —
remove a concept, replace it by another, or negate it — rebuild the text features, and measure
the change in prediction with `metrics.intervention_effect`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping, Sequence

import torch
import torch.nn.functional as F

from conceptclip.errors import ConfigError
from conceptclip.metrics.intervention import Activation, InterventionEffect, intervention_effect

ConceptSet = Mapping[str, Sequence[str]]  # class name -> its concepts
EditKind = Literal["remove", "replace", "negate"]


@dataclass(frozen=True)
class ConceptEdit:
    """One intervention on a concept set.

    kind: "remove" drops `concept`; "replace" puts `replacement` in its place; "negate" puts
    `negation.format(concept)` (default "no {}") in its place.
    classes: the classes whose sets are edited (default: every class holding the concept).
    """

    kind: EditKind
    concept: str
    replacement: str | None = None
    negation: str = "no {}"
    classes: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("remove", "replace", "negate"):
            raise ConfigError(f"ConceptEdit.kind={self.kind!r}: expected 'remove', 'replace' or 'negate'")
        if self.kind == "replace" and not self.replacement:
            raise ConfigError(f"ConceptEdit: replacing {self.concept!r} needs a replacement concept")
        if "{}" not in self.negation:
            raise ConfigError(f"ConceptEdit.negation={self.negation!r}: expected a template with '{{}}'")

    def apply(self, concepts: ConceptSet) -> dict[str, list[str]]:
        """The edited concept set (a new dict; the input is left unchanged)."""
        classes = set(self.classes) if self.classes is not None else set(concepts)
        unknown = classes - set(concepts)
        if unknown:
            raise ConfigError(f"ConceptEdit.classes: {sorted(unknown)} are not classes of the concept set "
                              f"{sorted(concepts)}")
        hits = [c for c in classes if self.concept in concepts[c]]
        if not hits:
            raise ConfigError(f"concept {self.concept!r} is in no concept list of classes {sorted(classes)}")
        new = self.replacement if self.kind == "replace" else self.negation.format(self.concept)
        out: dict[str, list[str]] = {}
        for c, items in concepts.items():
            items = list(items)
            if c in hits:
                items = [x for x in items if x != self.concept] if self.kind == "remove" else \
                    [new if x == self.concept else x for x in items]
            out[c] = items
        return out


@dataclass
class InterventionResult:
    """The edit, both concept sets, logits (N, C) before and after, and the per-sample effect."""

    edit: ConceptEdit
    concepts_before: dict[str, list[str]]
    concepts_after: dict[str, list[str]]
    logits_before: torch.Tensor
    logits_after: torch.Tensor
    effect: InterventionEffect

    def summary(self) -> dict[str, Any]:
        return {"kind": self.edit.kind, "concept": self.edit.concept, "replacement": self.edit.replacement,
                **self.effect.summary()}


def knowledge_intervention(logits_fn: Callable[[ConceptSet], torch.Tensor], concepts: ConceptSet, edit: ConceptEdit,
                           targets: torch.Tensor | None = None, *,
                           activation: Activation = "softmax") -> InterventionResult:
    """Apply `edit` to `concepts` and compare `logits_fn(before)` with `logits_fn(after)`.

    `logits_fn` rebuilds the concept prompts' text features from a concept set and returns the
    logits (N, C) of a fixed set of images (e.g. `ConceptPromptClassifier.logits_fn(features)`).
    The effect is `metrics.intervention_effect`: delta of the target class probability (default
    the class predicted before) and whether the prediction flipped.
    """
    before = {c: list(v) for c, v in concepts.items()}
    after = edit.apply(before)
    with torch.no_grad():
        lb, la = logits_fn(before), logits_fn(after)
    effect = intervention_effect(lb, la, targets, activation=activation)
    return InterventionResult(edit, before, after, lb.detach(), la.detach(), effect)


class ConceptPromptClassifier:
    """Classes scored through concept prompts (DEAL's "An image of [CAT] with [C1], [C2] ..."):

        prompt_c = template.format(class_c, ", ".join(concepts_c))    (plain_template when empty)
        logits_bc = logit_scale * cos(x_b, text(prompt_c))
    """

    def __init__(self, backbone: Any, classnames: Sequence[str], template: str = "an image of a {} with {}.",
                 plain_template: str = "an image of a {}.") -> None:
        if template.count("{}") != 2 or plain_template.count("{}") != 1:
            raise ConfigError(f"template {template!r} needs two '{{}}' (class, concepts) and plain_template "
                              f"{plain_template!r} one")
        self.backbone = backbone
        self.classnames = list(classnames)
        self.template = template
        self.plain_template = plain_template

    def prompts(self, concepts: ConceptSet) -> list[str]:
        missing = [c for c in self.classnames if c not in concepts]
        if missing:
            raise ConfigError(f"concept set has no entry for classes {missing}")
        return [self.template.format(c, ", ".join(concepts[c])) if concepts[c] else self.plain_template.format(c)
                for c in self.classnames]

    @torch.no_grad()
    def text_features(self, concepts: ConceptSet) -> torch.Tensor:
        """L2-normalised class prompt features (C, D) for a concept set."""
        return F.normalize(self.backbone.encode_texts(self.prompts(concepts)).float(), dim=-1)

    def logits(self, image_features: torch.Tensor, concepts: ConceptSet) -> torch.Tensor:
        text = self.text_features(concepts).to(image_features.device)
        return float(self.backbone.logit_scale) * F.normalize(image_features.float(), dim=-1) @ text.t()

    def logits_fn(self, image_features: torch.Tensor) -> Callable[[ConceptSet], torch.Tensor]:
        """concept set -> logits (N, C) of these images: what `knowledge_intervention` calls."""
        return lambda concepts: self.logits(image_features, concepts)
