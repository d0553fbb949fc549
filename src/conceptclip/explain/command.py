"""`conceptclip explain`: explain a finished run's predictions on given images.

Loads the run (config.json + model.safetensors, through `engine.load.load_run`), predicts each
image, computes the maps (Grad-CAM of the method's logits, image–prompt similarity maps, Chefer
relevance on ViTs) and, given concept prompts, concept scores and concept similarity maps. Writes

    out_dir/
      NNN_<image>_<explainer>.png   the image and one overlay per target (class or concept)
      maps.safetensors              the raw maps, key "NNN/<explainer>" -> (T, h, w)
      scores.json                   per image: prediction, probabilities, target scores, concept scores
      NNN_<image>_method_concepts.png   the image and the method's own concept heat maps (e.g. DEAL)

When the run's method has its own `explain(batch)` (DEAL, XCoOp, ECoR), its output joins each
image's record under "method_explanation" (JSON-safe; its heat maps, outputs named "*map"/"*maps",
go to maps.safetensors as "NNN/<name>"); concept maps become the `_method_concepts.png` panel,
titled with each concept and its contribution, best first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Sequence

import torch

from conceptclip.errors import ConfigError
from conceptclip.explain.method import gradcam_for, method_forward, method_text_features, relevance_for
from conceptclip.explain.sanity import MapSanity, SanityCheck, combine_checks
from conceptclip.explain.similarity import concept_scores, similarity_maps
from conceptclip.explain.targets import PredictedClassTarget, class_targets

EXPLAINERS = ("gradcam", "similarity", "chefer")


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


def method_explain(method: Any, pixels: torch.Tensor, feats: Any) -> Any:
    """The method's own `explain(batch)` on a batch of images (global features, patch tokens where
    the backbone gives them, pixels), or None when the method has no `explain`."""
    explain = getattr(method, "explain", None)
    if not callable(explain):
        return None
    batch = {"features": feats.global_, "pixels": pixels}
    if feats.patches is not None:
        batch["patches"] = feats.patches
    with torch.no_grad():
        return explain(batch)


def _concept_panel_titles(method: Any, record: dict[str, Any], maps: torch.Tensor,
                          ) -> tuple[list[int], list[str]] | None:
    """Which concept maps to draw, best first, and their titles "phrase" / "contribution +0.123":
    the maps follow the explained class's concept list (`method.concepts_of`), masked by
    "concept_mask", and "concepts" ranks (phrase, contribution). None when they do not line up."""
    concepts_of = getattr(method, "concepts_of", None)
    predicted, ranked = record.get("predicted"), record.get("concepts")
    if not (callable(concepts_of) and isinstance(predicted, int) and isinstance(ranked, list)):
        return None
    names = list(concepts_of(predicted))
    mask = record.get("concept_mask") or [True] * maps.shape[0]
    valid = [k for k in range(min(len(names), maps.shape[0])) if mask[k]]
    index = {names[k]: k for k in valid}
    order = [(index[n], float(v)) for n, v in ranked if n in index]
    if len(order) != len(valid):
        return None
    return [k for k, _ in order], [f"{names[k]}\ncontribution {v:+.3f}" for k, v in order]


def load_data_twin(run_dir: str | Path, device: str | None = None) -> Any:
    """The run's finished label-shuffled twin (data randomisation test), or None."""
    from conceptclip.engine.load import load_run
    from conceptclip.engine.sanity import TWIN_DIR

    twin_dir = Path(run_dir) / TWIN_DIR
    if not (twin_dir / "metrics.json").is_file():
        return None
    return load_run(twin_dir, device)[0]
def remove_previous(out: Path) -> list[str]:
    """Delete what an earlier `explain` wrote to `out` (the overlays its scores.json lists,
    maps.safetensors, scores.json), so no stale overlay of another image or explainer is left
    beside the new ones; files it did not write stay. Returns the names removed."""
    import json

    scores = out / "scores.json"
    if not scores.is_file():
        return []
    try:
        doc = json.loads(scores.read_text(encoding="utf-8"))
        names = [f for r in doc.get("images", []) for f in (r.get("overlays") or {}).values()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError, TypeError):
        names = []
    removed = []
    for name in [*names, "maps.safetensors", "scores.json"]:
        if not isinstance(name, str) or Path(name).name != name:  # only plain file names inside `out`
            continue
        path = out / name
        if path.is_file():
            path.unlink()
            removed.append(name)
    return removed


def _safe_stem(path: Path) -> str:
    stem = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in path.stem)
    return stem[:60] or "image"


def explain_images(run_dir: str | Path, image_paths: Sequence[str | Path], out_dir: str | Path, *,
                   explainers: Sequence[str] | None = None, targets: Literal["all", "predicted"] = "all",
                   concepts: Sequence[str] = (), reference: str | None = None, alpha: float = 0.5,
                   batch_size: int = 16, device: str | None = None,
                   method_explanation: bool = True, sanity: bool = True) -> dict[str, Any]:
    """Explain the run in `run_dir` on `image_paths`; write overlays, raw maps and scores.json to
    `out_dir`; return the scores document.

    explainers: any of "gradcam", "similarity", "chefer" (default: every one that applies).
    targets: "all" classes (one overlay per class) or each image's "predicted" class.
    concepts: concept prompts (e.g. "a dermoscopy image with blue-whitish veil"): their scores
        (cosine, or MONET-style against the `reference` prompt) and similarity maps.
    method_explanation: add the method's own `explain` output (see the module docstring).
    sanity: run the saliency sanity checks (`explain.sanity`) on each batch's maps of the predicted
        class: learned-parameter randomisation, and data randomisation where the run has its
        label-shuffled twin (`conceptclip sanity RUN`). A map type that fails is drawn with a red
        banner saying it is not an explanation; the scores go to scores.json under "sanity".
    """
    from conceptclip.data.images import load_image
    from conceptclip.engine.load import load_run
    from conceptclip.explain.maps import center_crop_geometry
    from conceptclip.io import atomic_write, save_tensors, write_json
    from conceptclip.prompts import encode_prompts
    from conceptclip.report.overlay import overlay_panel, save_png
    from conceptclip.report.plots import concept_maps_png

    paths = [Path(p) for p in image_paths]
    if not paths:
        raise ConfigError("explain: expected at least one image path")
    if targets not in ("all", "predicted"):
        raise ConfigError(f"targets={targets!r}: expected 'all' or 'predicted'")
    method, cfg = load_run(run_dir, device=device)
    backbone = method.backbone
    usable = available_explainers(method)
    chosen = list(explainers) if explainers else usable
    for e in chosen:
        if e not in EXPLAINERS:
            raise ConfigError(f"explainer {e!r}: expected some of {EXPLAINERS}")
        if e not in usable:
            raise ConfigError(f"explainer {e!r} does not apply to method {method.name!r} on backbone "
                              f"{backbone.name!r} (usable: {usable})")
    classnames = list(method.classnames)
    concept_feats = encode_prompts(backbone, list(concepts)) if concepts else None
    reference_feat = encode_prompts(backbone, [reference])[0] if (reference and concepts) else None
    if reference and not concepts:
        raise ConfigError("explain: a reference prompt only makes sense with concept prompts")

    checker = MapSanity(method, load_data_twin(run_dir, device)) if sanity else None
    sanity_checks: dict[str, list[SanityCheck]] = {}

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    remove_previous(out)
    forward = method_forward(method)
    raw: dict[str, torch.Tensor] = {}
    records: list[dict[str, Any]] = []
    scale = float(backbone.logit_scale)
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        images = [load_image(p) for p in chunk]
        pixels = backbone.preprocess(images).to(backbone.device)
        with torch.no_grad():
            out_model = method_forward(method, patches=True)(pixels)
            probs = method.probabilities(out_model.logits).float().cpu()
        pred = probs.argmax(1)
        tgt = class_targets(len(classnames)) if targets == "all" else [PredictedClassTarget()]
        maps: dict[str, torch.Tensor] = {}
        target_scores: dict[str, torch.Tensor] = {}
        if "gradcam" in chosen:
            res = gradcam_for(backbone, forward).compute(pixels, tgt)
            maps["gradcam"], target_scores["gradcam"] = res.maps.cpu(), res.scores.cpu()
        if "chefer" in chosen:
            res = relevance_for(backbone, forward).compute(pixels, tgt)
            maps["chefer"], target_scores["chefer"] = res.maps.cpu(), res.scores.cpu()
        if "similarity" in chosen:
            with torch.no_grad():
                sim = similarity_maps(out_model.features, method_text_features(method).to(pixels)).cpu()
            maps["similarity"] = sim if targets == "all" else sim[torch.arange(len(chunk)), pred][:, None]
        chunk_checks: dict[str, list[SanityCheck]] = {}
        if checker is not None:
            chunk_checks = checker.check(pixels, [e for e in chosen if e in maps], pred)
            for e, cs in chunk_checks.items():
                sanity_checks.setdefault(e, []).extend(cs)
        own = None
        if method_explanation:
            feats = out_model.features if out_model.features is not None else backbone.encode_image(pixels, patches=True)
            doc_own = method_explain(method, pixels, feats)
            own = split_method_explanation(doc_own, len(chunk)) if isinstance(doc_own, dict) and doc_own else None
        c_scores = None
        if concept_feats is not None:
            with torch.no_grad():
                cf = concept_feats.to(pixels)
                maps["concepts"] = similarity_maps(out_model.features, cf).cpu()
                c_scores = concept_scores(out_model.features, cf, reference_feat.to(pixels) if reference_feat is not None
                                          else None, scale=scale).cpu()
        for j, (path, image) in enumerate(zip(chunk, images)):
            i = start + j
            key = f"{i:03d}_{_safe_stem(path)}"
            shown = center_crop_geometry(image, backbone.image_size)
            p = probs[j]
            record: dict[str, Any] = {
                "image": str(path), "key": key, "prediction": classnames[int(pred[j])],
                "probabilities": {c: float(v) for c, v in zip(classnames, p)}, "overlays": {}, "target_scores": {},
            }
            for name, m in maps.items():
                if name == "concepts":
                    titles = list(concepts)
                elif targets == "all":
                    titles = [f"{c} {float(v):.2f}" for c, v in zip(classnames, p)]
                else:
                    titles = [f"predicted: {classnames[int(pred[j])]}"]
                file = f"{key}_{name}.png"
                bad = [c for c in chunk_checks.get(name, []) if c.applicable and not c.passed]
                banner = " ".join(c.message() for c in bad) if bad else None
                save_png(overlay_panel(shown, m[j], titles, alpha=alpha, banner=banner), out / file)
                record["overlays"][name] = file
                raw[f"{key}/{name}"] = m[j].contiguous()
            for name, s in target_scores.items():
                names = classnames if targets == "all" else [classnames[int(pred[j])]]
                record["target_scores"][name] = {c: float(v) for c, v in zip(names, s[j])}
            if c_scores is not None:
                record["concept_scores"] = {c: float(v) for c, v in zip(concepts, c_scores[j])}
            if own is not None:
                own_record, own_maps = own[j]
                record["method_explanation"] = own_record
                for name, m in own_maps.items():
                    raw[f"{key}/{name}"] = m
                cmaps = own_maps.get("concept_maps")
                drawn = _concept_panel_titles(method, own_record, cmaps) if cmaps is not None and cmaps.dim() == 3 else None
                if drawn:
                    order, titles = drawn
                    c = own_record["predicted"]
                    header = f"{classnames[c]} (p={float(p[c]):.2f})" if c < len(classnames) else "image"
                    png = concept_maps_png(shown, cmaps[order], titles, header=header, alpha=alpha)
                    file = f"{key}_method_concepts.png"
                    atomic_write(out / file, lambda f, data=png: f.write_bytes(data))
                    record["overlays"]["method_concepts"] = file
            records.append(record)
    save_tensors(out / "maps.safetensors", raw)
    doc = {"run": str(run_dir), "method": method.name, "backbone": cfg.get("backbone"), "classnames": classnames,
           "targets": targets, "explainers": chosen, "concepts": list(concepts), "reference": reference,
           "concept_score": ("monet" if reference else "cosine") if concepts else None,
           "sanity": {e: [c.to_dict() for c in combine_checks(cs)] for e, cs in sanity_checks.items()},
           "images": records}
    write_json(out / "scores.json", doc)
    return doc
