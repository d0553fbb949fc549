"""Explain one image with a trained run: prediction, concept scores, heat maps and a textual
explanation — what the report's per-image cards and the browser demo show.

`RunExplainer(run_dir)` draws from the one explanation pipeline (`engine.explain.RunExplanations`:
the run loaded once, the concept prompts encoded once); `explain(image)` returns an
`ImageExplanation`:

* prediction and class probabilities;
* concept scores: the method's own (`method.concept_scores(batch)` with `method.concept_names`)
  where it has them, else the cosine similarity of the image feature with each concept prompt
  of a concept bank (`explain.similarity.concept_scores`);
* heat maps of the predicted class: Grad-CAM of the method's logits, image–prompt similarity
  (prompt methods), Chefer relevance (ViTs), and the similarity map of the top concept;
* a textual explanation: the method's rationale where it gives one (`method.explain(batch)`
  returning {"rationale": [one string per image]}), the top concepts and which of them the bank
  lists for the predicted class, and the concepts nearest to the learned class prompt
  (`explain.textual.explain_prompt`, XCoOp's textual explanation).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image

from conceptclip.errors import ConfigError, KnowledgeError


@dataclass
class ConceptSet:
    """Concept phrases, the prompts they are scored with, and the bank they came from."""

    names: list[str]
    prompts: list[str]
    source: str
    by_class: dict[str, list[str]] = field(default_factory=dict)


def concept_template(class_template: str) -> str:
    """A concept prompt template from the run's class template: "a dermoscopy image of a {}." ->
    "a dermoscopy image with {}." (fallback "a photo with {}.")."""
    for old in (" of a {}", " of an {}", " of {}"):
        if old in class_template:
            return class_template.replace(old, " with {}", 1)
    return "a photo with {}."


def load_concepts(bank: str | Path | None, config: dict[str, Any], template: str | None = None,
                  max_concepts: int | None = None) -> ConceptSet | None:
    """Concepts of a bank JSON file or shared-bank name; with no bank, the concept bank the dataset
    registry names for the run's dataset (e.g. "ph2") when it loads, else None. More than
    `max_concepts` distinct concepts (None: no cap) is a ConfigError saying how to raise the cap."""
    from conceptclip.knowledge.resolve import default_bank, load_bank_any

    if bank is None:
        spec = default_bank("concepts", dataset=str(config.get("dataset", "")))
        try:
            loaded = load_bank_any(spec) if spec else None
        except (KnowledgeError, OSError):
            loaded = None
        if loaded is None:
            return None
    else:
        loaded = load_bank_any(str(bank))
    by_class = {c: [x.phrase for x in e.concepts if x.polarity == "positive"] for c, e in loaded.classes.items()}
    names = list(dict.fromkeys(p for ps in by_class.values() for p in ps))
    if not names:
        raise ConfigError(f"concept bank {loaded.name!r} has no positive concepts to score")
    if max_concepts is not None and len(names) > max_concepts:
        raise ConfigError(f"concept bank {loaded.name!r} has {len(names)} concepts, more than the cap of {max_concepts} "
                          f"(each is encoded at start-up and scored on every image); pass --max-concepts {len(names)} "
                          "to use them all, or a smaller bank")
    tpl = template or concept_template(str(config.get("template", "a photo of a {}.")))
    if "{}" not in tpl:
        raise ConfigError(f"concept template {tpl!r}: expected a '{{}}' slot for the concept phrase")
    return ConceptSet(names, [tpl.format(n) for n in names], f"{loaded.name} ({loaded.content_hash[:19]})", by_class)


CONCEPT_MAP_NOTE = {"test": "none", "applicable": False, "passed": False,
                    "message": "Not a sanity-checked explanation of this model: the map compares the frozen image "
                               "encoder's patches with the concept prompt; nothing the model learned enters it."}


@dataclass
class HeatMap:
    name: str
    title: str
    image: Image.Image  # the overlay on the image as the model saw it
    sanity: list[dict[str, Any]] = field(default_factory=list)  # `SanityCheck.to_dict()` of this map type

    @property
    def failed(self) -> bool:
        """The map failed a sanity check: pages show the reason instead of the map."""
        from conceptclip.explain.sanity import failed

        return failed(self.sanity)

    @property
    def sanity_text(self) -> str:
        return " ".join(c["message"] for c in self.sanity if c.get("applicable") and not c.get("passed")) or \
            " ".join(c["message"] for c in self.sanity)


@dataclass
class ImageExplanation:
    prediction: str
    probabilities: dict[str, float]
    concepts: list[tuple[str, float]]  # every concept, best first
    concept_kind: str  # "method" | "cosine" | ""
    maps: list[HeatMap]
    rationale: list[str]
    shown: Image.Image  # the centre crop the model saw

    def top_concepts(self, k: int = 8) -> list[dict[str, float | str]]:
        """The k best concepts with `bar` in [0, 1]: the score relative to the lowest and highest
        score of all this image's concepts (cosines of different concepts sit close together)."""
        if not self.concepts:
            return []
        scores = [s for _, s in self.concepts]
        lo, hi = min(scores), max(scores)
        span = hi - lo
        return [{"name": n, "score": s, "bar": (s - lo) / span if span > 0 else 1.0} for n, s in self.concepts[:k]]


class RunExplainer:
    """A trained run, ready to explain single images: a drawing layer over the one explanation
    pipeline (`engine.explain.RunExplanations`, maps of the predicted class, the method's own concept
    scores first, cosine scores of the bank's concept prompts otherwise)."""

    def __init__(self, run_dir: str | Path, *, concepts: ConceptSet | None = None, bank: str | Path | None = None,
                 concept_template: str | None = None, device: str | None = None, alpha: float = 0.5,
                 backbones: dict[str, Any] | None = None, load_bank: bool = True, sanity: bool = True,
                 max_concepts: int | None = None) -> None:
        from conceptclip.engine.explain import RunExplanations
        from conceptclip.engine.load import read_config

        if concepts is None and load_bank:
            concepts = load_concepts(bank, read_config(run_dir), concept_template, max_concepts)
        self.concepts = concepts
        self.pipeline = RunExplanations(run_dir, device=device, backbones=backbones if backbones is not None else {},
                                        targets="predicted", concept_prompts=concepts.prompts if concepts else (),
                                        concept_names=concepts.names if concepts else None,
                                        own_concept_scores=True, sanity=sanity, progress=True)
        self.run_dir = self.pipeline.run_dir
        self.method, self.config = self.pipeline.method, self.pipeline.config
        self.backbone = self.pipeline.backbone
        self.classnames = self.pipeline.classnames
        self.alpha = alpha
        self.explainers = self.pipeline.explainers
        self.concept_features = self.pipeline.concept_features
        self.sanity = self.pipeline.checker
        prompt = self.pipeline.prompt_explanation()
        # per class, the concepts nearest to the learned class prompt (prompt methods only)
        self.prompt_nearest: dict[str, list[tuple[str, float]]] = prompt.nearest_concepts(3) if prompt else {}

    @property
    def method_name(self) -> str:
        return str(self.method.name)

    def explain(self, image: Image.Image) -> ImageExplanation:
        """Explain one RGB image (see the module docstring)."""
        return self.explain_batch([image])[0]

    def explain_batch(self, images: Sequence[Image.Image]) -> list[ImageExplanation]:
        from conceptclip.explain.maps import center_crop_geometry
        from conceptclip.report.overlay import overlay

        if not images:
            return []
        batch = self.pipeline.explain_batch(images)
        titles = {"gradcam": "Grad-CAM", "chefer": "Chefer relevance", "similarity": "image–prompt similarity"}
        names, c_scores = batch.concept_names, batch.concept_scores
        results = []
        for i, image in enumerate(images):
            shown = center_crop_geometry(image.convert("RGB"), self.backbone.image_size)
            p = batch.probabilities[i]
            c = self.classnames[int(batch.predicted[i])]
            heat = [HeatMap(name, f"{titles[name]} · {c}", overlay(shown, m[i, 0], self.alpha),
                            [x.to_dict() for x in batch.sanity.get(name, [])]) for name, m in batch.maps.items()]
            ranked: list[tuple[str, float]] = []
            if c_scores is not None:
                order = torch.argsort(c_scores[i], descending=True)
                ranked = [(names[int(j)], float(c_scores[i, j])) for j in order]
                if batch.concept_maps is not None:
                    top = int(order[0])
                    heat.append(HeatMap("concept", f"concept similarity · {names[top]}",
                                        overlay(shown, batch.concept_maps[i, top], self.alpha), [CONCEPT_MAP_NOTE]))
            probs_d = {n: float(v) for n, v in zip(self.classnames, p)}
            text = self._rationale(c, probs_d, ranked, batch.rationales[i] if batch.rationales else None)
            results.append(ImageExplanation(c, probs_d, ranked, batch.concept_kind if ranked else "", heat, text, shown))
        return results

    def concept_scores(self, feats, pixels) -> tuple[torch.Tensor | None, str, list[str]]:
        """(scores (B, K) or None, kind "method" | "cosine" | "", concept names) of a batch: the
        method's own concept scores where it has them, else cosines with the bank's concept prompts."""
        return self.pipeline.concept_scores(feats, pixels)

    def _rationale(self, predicted: str, probs: dict[str, float], ranked: list[tuple[str, float]],
                   own: str | None) -> list[str]:
        lines = []
        if own:
            lines.append(f"Method rationale: {own}")
        order = sorted(probs.items(), key=lambda kv: -kv[1])
        runner = f" (next: {order[1][0]}, {order[1][1]:.2f})" if len(order) > 1 else ""
        lines.append(f"Predicted {predicted} with probability {probs[predicted]:.2f}{runner}.")
        if ranked:
            top = ranked[:3]
            lines.append("Highest-scoring concepts: " + ", ".join(f"{n} ({s:.3f})" for n, s in top) + ".")
            listed = self.concepts.by_class.get(predicted) if self.concepts else None
            if listed:
                hits = [n for n, _ in top if n in listed]
                lines.append(f"The concept bank lists {len(listed)} concepts for {predicted}; "
                             + (f"of the top three, {', '.join(hits)} {'is' if len(hits) == 1 else 'are'} among them."
                                if hits else "none of the top three is among them."))
        near = self.prompt_nearest.get(predicted)
        if near:
            lines.append(f"The learned prompt for {predicted} lies nearest to the concepts: "
                         + ", ".join(f"{n} (cosine distance {d:.3f})" for n, d in near) + ".")
        return lines
