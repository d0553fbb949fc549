"""`conceptclip explain`'s files: a finished run's explanations of given images, drawn from the one
explanation pipeline (`engine.explain.RunExplanations`). Writes

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

import json
from pathlib import Path
from typing import Any, Literal, Sequence

import torch

from conceptclip.errors import ConfigError
from conceptclip.explain.sanity import SanityCheck, combine_checks


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


def remove_previous(out: Path) -> list[str]:
    """Delete what an earlier `explain` wrote to `out` (the overlays its scores.json lists,
    maps.safetensors, scores.json), so no stale overlay of another image or explainer is left
    beside the new ones; files it did not write stay. Returns the names removed."""
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
    from conceptclip.engine.explain import RunExplanations
    from conceptclip.explain.maps import center_crop_geometry
    from conceptclip.io import atomic_write, save_tensors, write_json
    from conceptclip.report.overlay import overlay_panel, save_png
    from conceptclip.report.plots import concept_maps_png

    paths = [Path(p) for p in image_paths]
    if not paths:
        raise ConfigError("explain: expected at least one image path")
    if targets not in ("all", "predicted"):
        raise ConfigError(f"targets={targets!r}: expected 'all' or 'predicted'")
    if reference and not concepts:
        raise ConfigError("explain: a reference prompt only makes sense with concept prompts")
    pipe = RunExplanations(run_dir, device=device, explainers=explainers, targets=targets, concept_prompts=concepts,
                           reference=reference, sanity=sanity, method_explanation=method_explanation)
    method, classnames = pipe.method, pipe.classnames
    sanity_checks: dict[str, list[SanityCheck]] = {}

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    remove_previous(out)
    raw: dict[str, torch.Tensor] = {}
    records: list[dict[str, Any]] = []
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        images = [load_image(p) for p in chunk]
        batch = pipe.explain_batch(images)
        for e, cs in batch.sanity.items():
            sanity_checks.setdefault(e, []).extend(cs)
        maps = dict(batch.maps)
        if batch.concept_maps is not None:
            maps["concepts"] = batch.concept_maps
        probs, pred = batch.probabilities, batch.predicted
        for j, (path, image) in enumerate(zip(chunk, images)):
            i = start + j
            key = f"{i:03d}_{_safe_stem(path)}"
            shown = center_crop_geometry(image, pipe.backbone.image_size)
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
                bad = [c for c in batch.sanity.get(name, []) if c.applicable and not c.passed]
                banner = " ".join(c.message() for c in bad) if bad else None
                save_png(overlay_panel(shown, m[j], titles, alpha=alpha, banner=banner), out / file)
                record["overlays"][name] = file
                raw[f"{key}/{name}"] = m[j].contiguous()
            for name, s in batch.target_scores.items():
                names = classnames if targets == "all" else [classnames[int(pred[j])]]
                record["target_scores"][name] = {c: float(v) for c, v in zip(names, s[j])}
            if batch.concept_scores is not None:
                record["concept_scores"] = {c: float(v) for c, v in zip(concepts, batch.concept_scores[j])}
            if batch.method_explanation is not None:
                own_record, own_maps = batch.method_explanation[j]
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
    doc = {"run": str(run_dir), "method": method.name, "backbone": pipe.config.get("backbone"), "classnames": classnames,
           "targets": targets, "explainers": pipe.explainers, "concepts": list(concepts), "reference": reference,
           "concept_score": pipe.concept_score_kind,
           "sanity": {e: [c.to_dict() for c in combine_checks(cs)] for e, cs in sanity_checks.items()},
           "images": records}
    write_json(out / "scores.json", doc)
    return doc
