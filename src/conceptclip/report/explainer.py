"""Explain one image with a trained run: prediction, concept scores, heat maps and a textual
explanation — what the report's per-image cards and the browser demo show.

`RunExplainer(run_dir)` loads the run once (`engine.load.load_run`), encodes the concept prompts
once, then `explain(image)` returns an `ImageExplanation`:

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
    """Concepts of a bank JSON file or shared-bank name; with no bank, the shared bank named like
    the run's dataset (e.g. "ph2") when it loads, else None. More than `max_concepts` distinct
    concepts (None: no cap) is a ConfigError saying how to raise the cap."""
    from conceptclip.knowledge.loaders import load_shared_bank
    from conceptclip.knowledge.schema import load_bank

    if bank is None:
        try:
            loaded = load_shared_bank(str(config.get("dataset", "")))
        except (KnowledgeError, OSError):
            return None
    else:
        path = Path(bank)
        loaded = load_bank(path) if (path.suffix == ".json" or path.exists()) else load_shared_bank(str(bank))
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
    """A trained run, ready to explain single images."""

    def __init__(self, run_dir: str | Path, *, concepts: ConceptSet | None = None, bank: str | Path | None = None,
                 concept_template: str | None = None, device: str | None = None, alpha: float = 0.5,
                 backbones: dict[str, Any] | None = None, load_bank: bool = True, sanity: bool = True,
                 max_concepts: int | None = None) -> None:
        from conceptclip.engine.load import load_run
        from conceptclip.explain.command import available_explainers
        from conceptclip.prompts import encode_prompts

        self.run_dir = Path(run_dir)
        self.method, self.config = load_run(self.run_dir, device, backbones if backbones is not None else {})
        self.backbone = self.method.backbone
        self.classnames = list(self.method.classnames)
        self.alpha = alpha
        self.explainers = available_explainers(self.method)
        if concepts is None and load_bank:
            concepts = load_concepts(bank, self.config, concept_template, max_concepts)
        self.concepts = concepts
        self.concept_features = (encode_prompts(self.backbone, concepts.prompts,
                                                desc=f"encoding {len(concepts.prompts)} concept prompts")
                                 if concepts else None)
        self.prompt_nearest = self._prompt_nearest()
        self.sanity = None
        if sanity:  # saliency sanity checks of every map shown (explain.sanity)
            from conceptclip.explain.command import load_data_twin
            from conceptclip.explain.sanity import MapSanity

            self.sanity = MapSanity(self.method, load_data_twin(self.run_dir, device))

    def _prompt_nearest(self) -> dict[str, list[tuple[str, float]]]:
        """Per class, the concepts nearest to the learned class prompt (prompt methods only)."""
        if self.concepts is None or "similarity" not in self.explainers:
            return {}
        from conceptclip.explain.textual import explain_prompt

        return explain_prompt(self.method, self.concept_features, self.concepts.names).nearest_concepts(3)

    @property
    def method_name(self) -> str:
        return str(self.method.name)

    def explain(self, image: Image.Image) -> ImageExplanation:
        """Explain one RGB image (see the module docstring)."""
        return self.explain_batch([image])[0]

    def explain_batch(self, images: Sequence[Image.Image]) -> list[ImageExplanation]:
        from conceptclip.explain.maps import center_crop_geometry
        from conceptclip.explain.method import gradcam_for, method_forward, method_text_features, relevance_for
        from conceptclip.explain.similarity import similarity_maps
        from conceptclip.explain.targets import ClassTarget
        from conceptclip.report.overlay import overlay

        if not images:
            return []
        method, backbone = self.method, self.backbone
        pixels = backbone.preprocess([im.convert("RGB") for im in images]).to(backbone.device)
        with torch.no_grad():
            out = method_forward(method, patches=True)(pixels)
            probs = method.probabilities(out.logits).float().cpu()
            feats = out.features if out.features is not None else backbone.encode_image(pixels, patches=True)
        pred = probs.argmax(1)
        target = [ClassTarget(pred.to(backbone.device))]
        maps: dict[str, torch.Tensor] = {}
        titles = {"gradcam": "Grad-CAM", "chefer": "Chefer relevance", "similarity": "image–prompt similarity"}
        forward = method_forward(method)
        if "gradcam" in self.explainers:
            maps["gradcam"] = gradcam_for(backbone, forward).compute(pixels, target).maps[:, 0].detach().cpu()
        if "chefer" in self.explainers:
            maps["chefer"] = relevance_for(backbone, forward).compute(pixels, target).maps[:, 0].detach().cpu()
        if "similarity" in self.explainers and feats.patches is not None:
            with torch.no_grad():
                sim = similarity_maps(feats, method_text_features(method).to(feats.patches)).cpu()
            maps["similarity"] = sim[torch.arange(len(images)), pred]

        checks = self.sanity.check(pixels, list(maps), pred.to(backbone.device)) if self.sanity else {}
        c_scores, kind, names = self._concept_scores(feats, pixels)
        concept_maps = None
        if c_scores is not None and kind == "cosine" and feats.patches is not None:
            with torch.no_grad():
                concept_maps = similarity_maps(feats, self.concept_features.to(feats.patches)).cpu()
        rationales = self._method_rationale(pixels, feats, len(images))

        results = []
        for i, image in enumerate(images):
            shown = center_crop_geometry(image.convert("RGB"), backbone.image_size)
            p = probs[i]
            c = self.classnames[int(pred[i])]
            heat = [HeatMap(name, f"{titles[name]} · {c}", overlay(shown, m[i], self.alpha),
                            [x.to_dict() for x in checks.get(name, [])]) for name, m in maps.items()]
            ranked: list[tuple[str, float]] = []
            if c_scores is not None:
                order = torch.argsort(c_scores[i], descending=True)
                ranked = [(names[int(j)], float(c_scores[i, j])) for j in order]
                if concept_maps is not None:
                    top = int(order[0])
                    heat.append(HeatMap("concept", f"concept similarity · {names[top]}",
                                        overlay(shown, concept_maps[i, top], self.alpha), [CONCEPT_MAP_NOTE]))
            probs_d = {n: float(v) for n, v in zip(self.classnames, p)}
            text = self._rationale(c, probs_d, ranked, rationales[i] if rationales else None)
            results.append(ImageExplanation(c, probs_d, ranked, kind if ranked else "", heat, text, shown))
        return results

    def concept_scores(self, feats, pixels) -> tuple[torch.Tensor | None, str, list[str]]:
        """(scores (B, K) or None, kind "method" | "cosine" | "", concept names) of a batch: the
        method's own concept scores where it has them, else cosines with the bank's concept prompts."""
        return self._concept_scores(feats, pixels)

    def _concept_scores(self, feats, pixels) -> tuple[torch.Tensor | None, str, list[str]]:
        from conceptclip.explain.similarity import concept_scores

        own, own_names = getattr(self.method, "concept_scores", None), getattr(self.method, "concept_names", None)
        if callable(own) and own_names:
            batch = {"features": feats.global_, "pixels": pixels}
            if feats.patches is not None:
                batch["patches"] = feats.patches
            with torch.no_grad():
                scores = own(batch)
            if isinstance(scores, torch.Tensor) and scores.dim() == 2 and scores.shape[1] == len(own_names):
                return scores.float().cpu(), "method", list(own_names)
        if self.concept_features is None:
            return None, "", []
        with torch.no_grad():
            scores = concept_scores(feats.global_, self.concept_features.to(feats.global_))
        return scores.float().cpu(), "cosine", list(self.concepts.names)

    def _method_rationale(self, pixels, feats, n: int) -> list[str] | None:
        from conceptclip.explain.command import method_explain

        doc = method_explain(self.method, pixels, feats)
        rationale = doc.get("rationale") if isinstance(doc, dict) else None
        if isinstance(rationale, str):
            rationale = [rationale] * n
        if isinstance(rationale, (list, tuple)) and len(rationale) == n:
            return [str(r) for r in rationale]
        return None

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
