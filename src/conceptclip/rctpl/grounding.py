"""Grounding of a finding: maps from the learned prompts, scored against boxes or masks.

Maps (per image, for its annotated finding):
- "similarity": cosine of each patch token with the concept-level prompt t^C_c (the local branch);
- "gradcam": Grad-CAM of the merged logit s_c (Eq. 5) on the backbone's explain layer.

Annotations: a CSV with columns `image,finding,x,y,width,height` (one row per box, pixels of the
original image, as RSNA Pneumonia / ChestX-ray14 publish them; rows of one image and finding are
merged; an empty box gives an image without the finding's region) or `image,finding,mask` (a
binary mask image), or a JSON list of {"image", "finding", "boxes": [[x, y, w, h], ...]} or
{"image", "finding", "mask"}. Paths are relative to the annotation file. Truth masks get the
preprocessing geometry (short side resized, centre crop); maps are upsampled to it. Scores:
pointing game, and Dice / IoU / precision / recall of the min-max normalised map at a threshold.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from conceptclip.errors import DataError

MAP_KINDS = ("similarity", "gradcam")


@dataclass
class GroundingItem:
    image: Path
    finding: str
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)  # x, y, width, height
    mask: Path | None = None


def _path(root: Path, value: Any, where: str) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: expected a file path, got {value!r}")
    p = (root / value).resolve()
    if not p.is_file():
        raise DataError(f"{where}: file not found: {p}")
    return p


def _box(values: Sequence[Any], where: str) -> tuple[float, float, float, float]:
    try:
        x, y, w, h = (float(v) for v in values)
    except (TypeError, ValueError):
        raise DataError(f"{where}: expected a box x, y, width, height (numbers), got {list(values)!r}") from None
    if w <= 0 or h <= 0:
        raise DataError(f"{where}: box width and height must be positive, got {w} x {h}")
    return (x, y, w, h)


def load_grounding(path: str | Path) -> list[GroundingItem]:
    """Read a grounding annotation file (CSV or JSON, see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: grounding annotations not found")
    root = path.parent
    items: dict[tuple[Path, str], GroundingItem] = {}
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            cols = set(reader.fieldnames or [])
            if not {"image", "finding"} <= cols or not ({"x", "y", "width", "height"} <= cols or "mask" in cols):
                raise DataError(f"{path}: expected columns image,finding and x,y,width,height or mask; got {sorted(cols)}")
            for i, row in enumerate(reader):
                where = f"{path}:row {i + 2}"
                img = _path(root, row["image"], where)
                finding = (row.get("finding") or "").strip()
                if not finding:
                    raise DataError(f"{where}: missing field 'finding'")
                item = items.setdefault((img, finding), GroundingItem(img, finding))
                if row.get("mask"):
                    item.mask = _path(root, row["mask"], where)
                elif any((row.get(k) or "").strip() for k in ("x", "y", "width", "height")):
                    item.boxes.append(_box([row[k] for k in ("x", "y", "width", "height")], where))
    elif path.suffix.lower() == ".json":
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not valid JSON ({exc.msg})") from None
        if not isinstance(doc, list):
            raise DataError(f"{path}: expected a list of {{image, finding, boxes | mask}} objects")
        for i, rec in enumerate(doc):
            where = f"{path}:[{i}]"
            if not isinstance(rec, dict) or not isinstance(rec.get("finding"), str) or not rec["finding"].strip():
                raise DataError(f"{where}: expected an object with 'image' and 'finding'")
            img = _path(root, rec.get("image"), where)
            item = items.setdefault((img, rec["finding"].strip()), GroundingItem(img, rec["finding"].strip()))
            if rec.get("mask") is not None:
                item.mask = _path(root, rec["mask"], where)
            for j, b in enumerate(rec.get("boxes") or []):
                item.boxes.append(_box(b if isinstance(b, (list, tuple)) else [b], f"{where}.boxes[{j}]"))
    else:
        raise DataError(f"{path}: expected a .csv or .json grounding file")
    if not items:
        raise DataError(f"{path}: no annotations")
    return list(items.values())


def truth_mask(item: GroundingItem, size: int) -> torch.Tensor:
    """The item's region (size, size) bool in the model's view of the image (centre crop)."""
    from conceptclip.explain import center_crop_geometry

    with Image.open(item.image) as im:
        w, h = im.size
    if item.mask is not None:
        with Image.open(item.mask) as m:
            m = m.convert("L")
            if m.size != (w, h):
                raise DataError(f"{item.mask}: mask size {m.size} differs from its image's {(w, h)}")
            region = Image.fromarray((np.asarray(m) > 127).astype(np.uint8) * 255)
    else:
        region = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(region)
        for x, y, bw, bh in item.boxes:
            draw.rectangle([x, y, x + bw - 1, y + bh - 1], fill=255)
    crop = center_crop_geometry(region, size, Image.NEAREST)
    return torch.from_numpy(np.asarray(crop) > 127)


def finding_maps(method, pixels: torch.Tensor, class_index: torch.Tensor, kind: str) -> torch.Tensor:
    """Maps (B, h, w) of each image's finding (`class_index` (B,)) by `kind`."""
    from conceptclip.explain import ClassTarget, explain_method, method_similarity_maps

    if kind == "similarity":
        maps = method_similarity_maps(method, pixels)  # (B, C, h, w) against t^C
        return maps[torch.arange(maps.shape[0]), class_index]
    if kind == "gradcam":
        return explain_method(method, pixels, [ClassTarget(class_index)]).maps[:, 0]
    raise DataError(f"map kind {kind!r}: expected one of {MAP_KINDS}")


def evaluate_grounding(method, items: Sequence[GroundingItem], kinds: Sequence[str] = MAP_KINDS, *,
                       threshold: float = 0.5, tolerance: float = 0.0, batch_size: int = 16) -> dict[str, Any]:
    """Per map kind: pointing game and Dice / IoU / precision / recall over the items whose
    region is not empty (the method's classes must include every finding), and the same scores of
    the baseline maps ("baselines": random and centre, `explain.baseline_maps`) to read them against."""
    from conceptclip.data import load_image
    from conceptclip.metrics import map_grounding_scores, pointing_game

    bad = sorted({it.finding for it in items} - set(method.classnames))
    if bad:
        raise DataError(f"findings {bad} are not among the method's classes {method.classnames}")
    bb = method.backbone
    index = {c: i for i, c in enumerate(method.classnames)}
    maps: dict[str, list[torch.Tensor]] = {k: [] for k in kinds}
    truths = []
    for s in range(0, len(items), batch_size):
        chunk = items[s:s + batch_size]
        pixels = bb.preprocess([load_image(it.image) for it in chunk]).to(bb.device)
        cls = torch.tensor([index[it.finding] for it in chunk])
        truths.append(torch.stack([truth_mask(it, bb.image_size) for it in chunk]))
        for k in kinds:
            maps[k].append(finding_maps(method, pixels, cls.to(bb.device), k).detach().float().cpu())
    truth = torch.cat(truths)
    keep = truth.flatten(1).any(1)
    out: dict[str, Any] = {"n": int(keep.sum()), "n_empty": int((~keep).sum()), "threshold": threshold,
                           "tolerance": tolerance, "per_finding": {}}
    for k in kinds:
        m = torch.cat(maps[k])[keep]
        t = truth[keep]
        if not len(t):
            out[k] = None
            continue
        scores = map_grounding_scores(m, t, threshold=threshold)
        out[k] = {"pointing_game": pointing_game(m, t, tolerance=tolerance),
                  **{name: float(v) for name, v in scores.items()}}
    if int(keep.sum()):
        from conceptclip.explain.maps import baseline_maps

        grid = next(iter(maps.values()))[0].shape[-2:] if kinds else (7, 7)
        t = truth[keep]
        out["baselines"] = {}
        for name, m in baseline_maps(len(t), tuple(grid), bb.image_size).items():
            scores = map_grounding_scores(m, t, threshold=threshold)
            out["baselines"][name] = {"pointing_game": pointing_game(m, t, tolerance=tolerance),
                                      **{k: float(v) for k, v in scores.items()}}
    findings = [it.finding for it, kept in zip(items, keep.tolist()) if kept]
    out["per_finding"] = {f: findings.count(f) for f in sorted(set(findings))}
    return out
