"""Shared parts of methods that score C category prompts and T concept prompts (not a method itself):
the heat maps of a class and its concepts, concept scores and contributions, ranked rationales.

A host method (DEAL) scores every image against C + T prompt features with `_scores(batch, text)`
(B, C + T); `concept_index` (C, Kmax) holds each class's concept rows among the T, `concept_mask` which
of them are real (classes with fewer concepts are padded), `concept_lists` the phrases, and
`explain_text(text)` the C + T texts the heat maps explain. `ConceptPromptExplanations` adds, on that:

- concept scores (cosines) and each concept's share of its class's concept-averaged logit
  ("classification by description": class c scores the mean of its concept prompts' logits);
- a one-line rationale per image naming the concepts that contribute most to the predicted class;
- Grad-CAM (any backbone) or Chefer relevance (ViTs) maps on pixels of the category and of each of
  its concepts, all in one backward pass (`ConceptMaps`).

`ConceptDistanceExplanations` explains learned class prompts instead (XCoOp's textual explanation):
one prompt per concept from the config's `concept_template`, cosine scores of images with them, and
per image the concepts its predicted class's learned prompt lies nearest to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Sequence

import torch

from conceptclip.errors import ConfigError
from conceptclip.explain.method import gradcam_for, relevance_for
from conceptclip.explain.targets import ClassTarget, ModelOutput
from conceptclip.prompts import normalize


@dataclass
class ConceptMaps:
    """Heat maps of each image's explained class: concept maps (B, Kmax, h, w) with mask (B, Kmax),
    the category map (B, h, w), the explained classes (B,), and their target scores (B, 1 + Kmax)."""

    concepts: torch.Tensor
    category: torch.Tensor
    mask: torch.Tensor
    classes: torch.Tensor
    scores: torch.Tensor | None = None


class ConceptPromptExplanations:
    """Mixin for a `Method` with category and concept prompts (see the module docstring for what the
    host provides)."""

    @property
    def n_classes(self) -> int:
        return len(self.classnames)

    def _targets(self, classes: torch.Tensor) -> list[ClassTarget]:
        """Category logit of each image's class, then its class's Kmax concept logits (over C + T outputs)."""
        rows = self.n_classes + self.concept_index[classes]  # (B, Kmax)
        return [ClassTarget(classes)] + [ClassTarget(rows[:, k]) for k in range(rows.shape[1])]

    def concept_scores(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Cosine similarity (B, T) of each image with every concept prompt (names: `concept_names`)."""
        return self._scores(batch)[:, self.n_classes:] / self.backbone.logit_scale.detach()

    def concept_contributions(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, C, Kmax): concept k's share s cos(x, t_{c,k}) / K_c of class c's concept-averaged logit
        (padding 0); summed over k it gives `concept_averaged_logits`."""
        s = self._scores(batch)[:, self.n_classes:][:, self.concept_index]  # (B, C, Kmax)
        m = self.concept_mask.to(s.dtype)
        return s * m / m.sum(1, keepdim=True)

    def concept_averaged_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Classification by description: class c scores the mean of its concept prompts' logits (B, C)."""
        return self.concept_contributions(batch).sum(-1)

    def concepts_of(self, cls: int) -> list[str]:
        return list(self.concept_lists.concepts[cls])

    def pixel_forward(self, text: torch.Tensor | None = None):
        """pixels -> ModelOutput with logits (B, C + T) over `text` (default: the explained texts)."""
        text = self.explain_text().detach() if text is None else text

        def forward(pixels: torch.Tensor) -> ModelOutput:
            feats = self.backbone.encode_image(pixels)
            return ModelOutput(logits=self._scores({"features": feats.global_}, text), features=feats)

        return forward

    def heat_maps(self, pixels: torch.Tensor, classes: torch.Tensor | None = None, *,
                  explainer: Literal["gradcam", "chefer"] = "gradcam", create_graph: bool = False) -> ConceptMaps:
        """Concept and category heat maps on pixels (B, 3, S, S) for `classes` (default: predicted):
        Grad-CAM on the backbone's explain layer (any backbone) or Chefer relevance (ViTs)."""
        if explainer not in ("gradcam", "chefer"):
            raise ConfigError(f"{self.name} explainer={explainer!r}: expected 'gradcam' or 'chefer'")
        pixels = pixels.to(self.backbone.device)
        with torch.no_grad():
            text = self.all_text_features()
            if classes is None:
                classes = self._scores({"features": self.backbone.encode_image(pixels).global_}, text)[
                    :, : self.n_classes].argmax(1)
        classes = torch.as_tensor(classes, device=pixels.device).long()
        forward = self.pixel_forward(self.explain_text(text))
        tool = relevance_for(self.backbone, forward) if explainer == "chefer" else gradcam_for(self.backbone, forward)
        res = tool.compute(pixels, self._targets(classes), create_graph=create_graph)
        return ConceptMaps(res.maps[:, 1:], res.maps[:, 0], self.concept_mask[classes], classes, res.scores)

    def explain(self, batch: dict[str, torch.Tensor], k: int = 3) -> dict[str, Any]:
        """Per image: the predicted class, its concepts ranked by their contribution to the class's
        concept-averaged logit, a one-line rationale naming the top `k`, and, when the batch holds
        pixels, the Grad-CAM concept and category maps of the predicted class."""
        with torch.no_grad():
            logits = self.logits(batch)
            contrib = self.concept_contributions(batch)
        pred = logits.argmax(1)
        ranked, rationale = [], []
        for i, c in enumerate(pred.tolist()):
            names = self.concept_lists.concepts[c]
            values = contrib[i, c, : len(names)].tolist()
            order = sorted(range(len(names)), key=lambda j: -values[j])
            ranked.append([(names[j], float(values[j])) for j in order])
            rationale.append(f"{self.classnames[c]}, with " + ", ".join(names[j] for j in order[:k]))
        out: dict[str, Any] = {"predicted": pred, "concepts": ranked, "contributions": contrib, "rationale": rationale}
        if "pixels" in batch:
            maps = self.heat_maps(batch["pixels"], pred)
            out.update(concept_maps=maps.concepts, category_map=maps.category, concept_mask=maps.mask)
        return out


class ConceptDistanceExplanations:
    """Mixin for a `Method` with learned class prompts (`text_features()`, (C, D)), concept names
    (`concept_names`) and a config with `concept_template` (slots {concept}, optional {modality}) and
    `modality`."""

    @torch.no_grad()
    def concept_features(self, concepts: Sequence[str] | None = None) -> torch.Tensor:
        """L2-normalised features (K, D) of one prompt per concept (`concept_template`)."""
        concepts = list(concepts) if concepts is not None else self.concept_names
        if not concepts:
            raise ConfigError(f"{self.name}: no clinical concepts to explain with (prompts were given as text; "
                              "pass the concepts explicitly)")
        texts = [self.config.concept_template.format(modality=self.config.modality, concept=k) for k in concepts]
        return normalize(self.backbone.encode_texts(texts).float())

    def concept_scores(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """cos(f, concept prompt k) of each image (B, K), concepts in `concept_names` order."""
        concepts = self.concept_features().to(batch["features"].device)
        return normalize(batch["features"].float()) @ concepts.t()

    @torch.no_grad()
    def explain(self, batch: dict[str, torch.Tensor], k: int = 3) -> dict[str, Any]:
        """Per image, a one-line rationale: the predicted class and the `k` concepts its learned prompt
        lies nearest to (cosine distance, XCoOp's textual explanation)."""
        from conceptclip.metrics.prompt_distance import prompt_concept_distance

        if not self.concept_names:
            return {}
        dist = prompt_concept_distance(self.text_features().float().cpu(), self.concept_features().cpu())
        pred = self.logits(batch).argmax(1).tolist()
        nearest = {c: [self.concept_names[int(j)] for j in dist.ranking[c, :k]] for c in set(pred)}
        return {"rationale": [f"{self.classnames[c]}: its learned prompt lies nearest to "
                              f"{', '.join(nearest[c])}" for c in pred],
                "nearest_concepts": {self.classnames[c]: v for c, v in nearest.items()}}
