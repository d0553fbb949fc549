"""`conceptclip predict RUN IMAGES...`: a trained run on unlabelled images -> one CSV.

    image,prediction,p_<class 1>,...,p_<class C>,c_<concept 1>,...

One row per image (files, or every image in a given folder, recursively, in path order): the
predicted class, the class probabilities and, where there are concepts, their scores: the method's
own concept scores where it has them (e.g. a concept-bottleneck method), else the cosine similarity
of the image feature with each concept prompt of `--concepts BANK` (default: the shared bank named
like the run's dataset, e.g. "ph2"), as in the report and the browser demo.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from conceptclip.errors import ConfigError


def image_files(paths: Sequence[str | Path]) -> list[Path]:
    """Files as given; folders expanded to the image files below them (sorted)."""
    from conceptclip.data.dataset import IMAGE_SUFFIXES

    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise ConfigError(f"{p}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise ConfigError(f"{p}: image file or folder not found")
    if not out:
        raise ConfigError("predict: expected at least one image file or folder")
    return out


def predict_images(run: str | Path, images: Sequence[str | Path], out: str | Path, *, bank: str | None = None,
                   concept_template: str | None = None, batch_size: int = 16,
                   device: str | None = None) -> dict[str, Any]:
    """Write `out` (CSV, see the module docstring); return {"out", "images", "classes", "concepts",
    "concept_kind"}."""
    from conceptclip.data.images import load_image
    from conceptclip.engine.predictions import csv_text
    from conceptclip.explain.method import method_forward
    from conceptclip.io import write_text
    from conceptclip.report.explainer import RunExplainer

    files = image_files(images)
    if batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size}: expected a positive integer")
    explainer = RunExplainer(run, bank=bank, concept_template=concept_template, device=device)
    method, backbone = explainer.method, explainer.backbone
    forward = method_forward(method)
    rows: list[list[str]] = []
    concept_names: list[str] | None = None
    kind = ""
    for start in range(0, len(files), batch_size):
        chunk = files[start:start + batch_size]
        pixels = backbone.preprocess([load_image(f) for f in chunk]).to(backbone.device)
        with torch.no_grad():
            output = forward(pixels)
            probs = method.probabilities(output.logits).float().cpu()
            feats = output.features if output.features is not None else backbone.encode_image(pixels, patches=False)
        scores, kind, names = explainer.concept_scores(feats, pixels)
        concept_names = names if concept_names is None else concept_names
        for i, f in enumerate(chunk):
            row = [str(f), explainer.classnames[int(probs[i].argmax())], *(f"{p:.6f}" for p in probs[i].tolist())]
            if scores is not None:
                row += [f"{s:.6f}" for s in scores[i].tolist()]
            rows.append(row)
    header = ["image", "prediction", *(f"p_{c}" for c in explainer.classnames),
              *(f"c_{n}" for n in concept_names or [])]
    write_text(out, csv_text(header, rows))
    return {"out": str(out), "images": len(rows), "classes": explainer.classnames,
            "concepts": len(concept_names or []), "concept_kind": kind}
