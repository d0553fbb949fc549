"""The one explanation pipeline of a finished run: tensors and records, never drawings.

`RunExplanations(run_dir, ...)` loads the run once (`engine.load.load_run`), encodes the concept
prompts once, builds the saliency sanity checker (learned-parameter randomisation, and the data
randomisation twin where `conceptclip sanity RUN` trained it), then `explain_batch(images)` gives a
`BatchExplanation` per batch of RGB images:

* class probabilities and predictions;
* maps (B, T, h, w) per explainer ("gradcam", "chefer": with their target scores (B, T);
  "similarity": image–prompt similarity) for every class (`targets="all"`, T = C) or each image's
  predicted class (`targets="predicted"`, T = 1);
* the sanity checks of those map types on the predicted class;
* concept scores: the method's own (`method.concept_scores(batch)` with `method.concept_names`, when
  `own_concept_scores`), else those of the concept prompts: cosine, or MONET-style against the
  `reference` prompt with the backbone's logit scale (`explain.similarity.concept_scores`), with the
  concept prompts' similarity maps (B, K, h, w);
* the method's own `explain(batch)` output split per image (JSON-safe record, heat maps) and the
  rationale strings it gives.

The faces draw from it: `report.explain_files.explain_images` (`conceptclip explain`: overlays,
maps.safetensors, scores.json) and `report.explainer.RunExplainer` (the report's per-image cards, the
browser demo, `conceptclip predict`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import torch

from conceptclip.errors import ConfigError
from conceptclip.explain.method import gradcam_for, method_forward, method_text_features, relevance_for
from conceptclip.explain.sanity import MapSanity, SanityCheck
from conceptclip.explain.similarity import concept_scores, similarity_maps
from conceptclip.explain.targets import ClassTarget, class_targets

EXPLAINERS = ("gradcam", "similarity", "chefer")
Targets = Literal["all", "predicted"]


def available_explainers(method: Any) -> list[str]:
    """Explainers that apply to this method: Grad-CAM always, similarity maps for prompt methods
    (class text features), Chefer relevance on ViT backbones."""
    out = ["gradcam"]
    try:
        method_text_features(method)
        out.append("similarity")
    except ConfigError:
        pass
    if method.backbone.is_vit and method.backbone.explain_layers().get("image_attn"):
        out.append("chefer")
    return out


def json_safe(value: Any) -> Any:
    """Tensors and arrays -> (nested) lists or numbers, tuples -> lists, dict keys -> str."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return value.tolist()
    return str(value)


def _is_map(name: str) -> bool:
    return name.endswith("map") or name.endswith("maps")


def split_method_explanation(doc: dict[str, Any], n: int) -> list[tuple[dict[str, Any], dict[str, torch.Tensor]]]:
    """A method's `explain` output for a batch of `n` images -> per image (its JSON-safe record,
    its heat maps). Tensors with a leading batch dimension and lists of length n are split per
    image; tensors named "*map"/"*maps" are heat maps and leave the record; anything else (e.g.
    XCoOp's nearest concepts per class) is kept whole in every record."""
    out: list[tuple[dict[str, Any], dict[str, torch.Tensor]]] = [({}, {}) for _ in range(n)]
    for name, value in doc.items():
        batched_tensor = isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == n
        for i, (record, maps) in enumerate(out):
            if batched_tensor and _is_map(name):
                maps[name] = value[i].detach().float().cpu().contiguous()
            elif batched_tensor:
                record[name] = json_safe(value[i])
            elif isinstance(value, (list, tuple)) and len(value) == n:
                record[name] = json_safe(value[i])
            elif not (isinstance(value, torch.Tensor) and _is_map(name)):
                record[name] = json_safe(value)
    return out


def _method_batch(pixels: torch.Tensor, feats: Any) -> dict[str, torch.Tensor]:
    batch = {"features": feats.global_, "pixels": pixels}
    if feats.patches is not None:
        batch["patches"] = feats.patches
    return batch


def method_explain(method: Any, pixels: torch.Tensor, feats: Any) -> Any:
    """The method's own `explain(batch)` on a batch of images (global features, patch tokens where
    the backbone gives them, pixels), or None when the method has no `explain`."""
    explain = getattr(method, "explain", None)
    if not callable(explain):
        return None
    with torch.no_grad():
        return explain(_method_batch(pixels, feats))


def method_rationales(doc: Any, n: int) -> list[str] | None:
    """The "rationale" of a method's `explain` output as one string per image (one string for the
    batch is repeated), or None when it gives none."""
    rationale = doc.get("rationale") if isinstance(doc, dict) else None
    if isinstance(rationale, str):
        rationale = [rationale] * n
    if isinstance(rationale, (list, tuple)) and len(rationale) == n:
        return [str(r) for r in rationale]
    return None


def load_data_twin(run_dir: str | Path, device: str | None = None) -> Any:
    """The run's finished label-shuffled twin (data randomisation test), or None."""
    from conceptclip.engine.load import load_run
    from conceptclip.engine.sanity import TWIN_DIR

    twin_dir = Path(run_dir) / TWIN_DIR
    if not (twin_dir / "metrics.json").is_file():
        return None
    return load_run(twin_dir, device)[0]


@dataclass
class BatchExplanation:
    """One batch of images explained (tensors on the CPU; see the module docstring)."""

    probabilities: torch.Tensor  # (B, C)
    predicted: torch.Tensor  # (B,) class indices
    maps: dict[str, torch.Tensor]  # explainer -> (B, T, h, w), T = C ("all") or 1 ("predicted")
    target_scores: dict[str, torch.Tensor]  # "gradcam" / "chefer" -> (B, T)
    sanity: dict[str, list[SanityCheck]] = field(default_factory=dict)  # explainer -> one check per test
    concept_scores: torch.Tensor | None = None  # (B, K)
    concept_kind: str = ""  # "method" | "cosine" | "monet" | ""
    concept_names: list[str] = field(default_factory=list)  # K names
    concept_maps: torch.Tensor | None = None  # (B, K, h, w) of the concept prompts (prompt scores only)
    method_explanation: list[tuple[dict[str, Any], dict[str, torch.Tensor]]] | None = None  # per image
    rationales: list[str] | None = None  # the method's rationale per image


class RunExplanations:
    """A finished run, loaded once, ready to explain batches of images.

    explainers: any of "gradcam", "similarity", "chefer" (default: every one that applies).
    targets: maps of "all" classes or of each image's "predicted" class.
    concept_prompts / concept_names: the concept prompts to score (names default to the prompts).
    reference: a reference prompt for MONET-style concept scores (needs concept prompts).
    own_concept_scores: prefer the method's own concept scores where it has them.
    sanity: run the saliency sanity checks on each batch's maps of the predicted class.
    method_explanation: call the method's own `explain` (per-image records, heat maps, rationales).
    """

    def __init__(self, run_dir: str | Path, *, device: str | None = None, backbones: dict[str, Any] | None = None,
                 explainers: Sequence[str] | None = None, targets: Targets = "all",
                 concept_prompts: Sequence[str] = (), concept_names: Sequence[str] | None = None,
                 reference: str | None = None, own_concept_scores: bool = False, sanity: bool = True,
                 method_explanation: bool = True, progress: bool = False) -> None:
        from conceptclip.engine.load import load_run
        from conceptclip.prompts import encode_prompts

        if targets not in ("all", "predicted"):
            raise ConfigError(f"targets={targets!r}: expected 'all' or 'predicted'")
        self.run_dir = Path(run_dir)
        self.method, self.config = load_run(self.run_dir, device, backbones)
        self.backbone = self.method.backbone
        self.classnames = list(self.method.classnames)
        self.usable = available_explainers(self.method)
        self.explainers = list(explainers) if explainers else list(self.usable)
        for e in self.explainers:
            if e not in EXPLAINERS:
                raise ConfigError(f"explainer {e!r}: expected some of {EXPLAINERS}")
            if e not in self.usable:
                raise ConfigError(f"explainer {e!r} does not apply to method {self.method.name!r} on backbone "
                                  f"{self.backbone.name!r} (usable: {self.usable})")
        self.targets: Targets = targets
        prompts = list(concept_prompts)
        self.concept_prompts = prompts
        self.concept_names = list(concept_names) if concept_names is not None else list(prompts)
        if len(self.concept_names) != len(prompts):
            raise ConfigError(f"{len(self.concept_names)} concept names for {len(prompts)} concept prompts")
        if reference and not prompts:
            raise ConfigError("explain: a reference prompt only makes sense with concept prompts")
        self.reference = reference
        self.concept_features = (encode_prompts(self.backbone, prompts,
                                                desc=f"encoding {len(prompts)} concept prompts" if progress else None)
                                 if prompts else None)
        self.reference_feature = encode_prompts(self.backbone, [reference])[0] if (reference and prompts) else None
        self.own_concept_scores = own_concept_scores
        self.method_explanation = method_explanation
        self.checker = MapSanity(self.method, load_data_twin(self.run_dir, device)) if sanity else None

    @property
    def concept_score_kind(self) -> str | None:
        """How the concept prompts are scored: "monet" (with a reference), "cosine", or None."""
        return ("monet" if self.reference else "cosine") if self.concept_prompts else None

    def prompt_explanation(self) -> Any:
        """The concept prompts nearest to each learned class prompt and the vocabulary tokens nearest
        to its context vectors (`explain.textual.explain_prompt`); None without concept prompts or
        for methods without class text features."""
        if self.concept_features is None or "similarity" not in self.usable:
            return None
        from conceptclip.explain.textual import explain_prompt

        return explain_prompt(self.method, self.concept_features, self.concept_names)

    def preprocess(self, images: Sequence[Any]) -> torch.Tensor:
        """RGB pixels (B, 3, S, S) of PIL images, on the backbone's device."""
        return self.backbone.preprocess([im.convert("RGB") for im in images]).to(self.backbone.device)

    def method_concept_scores(self, feats: Any, pixels: torch.Tensor) -> tuple[torch.Tensor, list[str]] | None:
        """The method's own concept scores (B, K) and names, where it has them."""
        own, own_names = getattr(self.method, "concept_scores", None), getattr(self.method, "concept_names", None)
        if not (callable(own) and own_names):
            return None
        with torch.no_grad():
            scores = own(_method_batch(pixels, feats))
        if isinstance(scores, torch.Tensor) and scores.dim() == 2 and scores.shape[1] == len(own_names):
            return scores.float().cpu(), list(own_names)
        return None

    def concept_scores(self, feats: Any, pixels: torch.Tensor) -> tuple[torch.Tensor | None, str, list[str]]:
        """(scores (B, K) or None, kind "method" | "cosine" | "monet" | "", concept names) of a batch
        with image features `feats` (global features suffice for prompt scores)."""
        if self.own_concept_scores:
            own = self.method_concept_scores(feats, pixels)
            if own is not None:
                return own[0], "method", own[1]
        if self.concept_features is None:
            return None, "", []
        x = feats.global_
        with torch.no_grad():
            ref = self.reference_feature.to(x) if self.reference_feature is not None else None
            scores = concept_scores(x, self.concept_features.to(x), ref, scale=float(self.backbone.logit_scale))
        return scores.float().cpu(), str(self.concept_score_kind), list(self.concept_names)

    def explain_batch(self, images: Sequence[Any]) -> BatchExplanation:
        """Explain a batch of PIL images (see the module docstring)."""
        method, backbone = self.method, self.backbone
        pixels = self.preprocess(images)
        with torch.no_grad():
            out = method_forward(method, patches=True)(pixels)
            probs = method.probabilities(out.logits).float().cpu()
            feats = out.features if out.features is not None else backbone.encode_image(pixels, patches=True)
        pred = probs.argmax(1)
        n = len(images)
        tgt = class_targets(len(self.classnames)) if self.targets == "all" else [ClassTarget(pred.to(backbone.device))]
        maps: dict[str, torch.Tensor] = {}
        target_scores: dict[str, torch.Tensor] = {}
        forward = method_forward(method)
        if "gradcam" in self.explainers:
            res = gradcam_for(backbone, forward).compute(pixels, tgt)
            maps["gradcam"], target_scores["gradcam"] = res.maps.detach().cpu(), res.scores.detach().cpu()
        if "chefer" in self.explainers:
            res = relevance_for(backbone, forward).compute(pixels, tgt)
            maps["chefer"], target_scores["chefer"] = res.maps.detach().cpu(), res.scores.detach().cpu()
        if "similarity" in self.explainers and feats.patches is not None:
            with torch.no_grad():
                sim = similarity_maps(feats, method_text_features(method).to(feats.patches)).cpu()
            maps["similarity"] = sim if self.targets == "all" else sim[torch.arange(n), pred][:, None]
        checked = [e for e in self.explainers if e in maps]  # in the order asked for
        checks = self.checker.check(pixels, checked, pred.to(backbone.device)) if self.checker else {}
        own = rationales = None
        if self.method_explanation:
            doc = method_explain(method, pixels, feats)
            own = split_method_explanation(doc, n) if isinstance(doc, dict) and doc else None
            rationales = method_rationales(doc, n)
        scores, kind, names = self.concept_scores(feats, pixels)
        concept_maps = None
        if kind in ("cosine", "monet") and feats.patches is not None:
            with torch.no_grad():
                concept_maps = similarity_maps(feats, self.concept_features.to(feats.patches)).cpu()
        return BatchExplanation(probs, pred, maps, target_scores, checks, scores, kind, names, concept_maps,
                                own, rationales)
