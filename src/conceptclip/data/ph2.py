"""PH2 dermoscopy (200 images, 3 diagnoses, lesion masks, dermoscopic criteria), read in place
from `../shared/data/ph2` (never copied: the database is for research use, not redistribution;
public original: the PH2 database of Hospital Pedro Hispano, Mendonca et al., EMBC 2013)."""

from __future__ import annotations

import csv
from pathlib import Path

from conceptclip.data.dataset import Dataset, Sample
from conceptclip.errors import DataError
from conceptclip.paths import shared_data_dir

PH2_CLASSES = ["common nevus", "atypical nevus", "melanoma"]
PH2_TEMPLATE = "a dermoscopy image of a {}."
CRITERIA = ("asymmetry", "pigment_network", "dots_globules", "streaks", "regression_areas", "blue_whitish_veil")


def ph2_dir() -> Path:
    return shared_data_dir() / "ph2"


def criteria_phrases(attrs: dict[str, str]) -> list[str]:
    """Present dermoscopic criteria of one image as short phrases (the per-image rationale truth)."""
    out = []
    sym = attrs.get("asymmetry", "")
    if sym == "fully_asymmetric":
        out.append("asymmetric shape")
    elif sym == "symmetric_one_axis":
        out.append("asymmetry in one axis")
    else:
        out.append("symmetric shape")
    net = attrs.get("pigment_network", "")
    if net in ("typical", "atypical"):
        out.append(f"{net} pigment network")
    dots = attrs.get("dots_globules", "")
    if dots in ("typical", "atypical"):
        out.append(f"{'regular' if dots == 'typical' else 'irregular'} dots and globules")
    for key, phrase in (("streaks", "streaks"), ("regression_areas", "regression structures"),
                        ("blue_whitish_veil", "blue-whitish veil")):
        if attrs.get(key) == "present":
            out.append(phrase)
    colours = [c.replace("_", " ") for c in attrs.get("colors", "").split(";") if c]
    if len(colours) >= 3:
        out.append("multiple colours")
    return out


def caption(diagnosis: str, attrs: dict[str, str]) -> str:
    """A caption built from the expert annotations (used to align the `lite` backbone)."""
    colours = [c.replace("_", " ") for c in attrs.get("colors", "").split(";") if c]
    text = f"a dermoscopy image of a {diagnosis} with " + ", ".join(criteria_phrases(attrs))
    if colours:
        text += "; colours: " + ", ".join(colours)
    return text + "."


def load_ph2(root: str | Path | None = None) -> Dataset:
    """The PH2 dataset with captions, masks and criteria; skips nothing, checks everything."""
    root = Path(root) if root else ph2_dir()
    labels = root / "labels.csv"
    if not labels.is_file():
        raise DataError(f"PH2 not found: {labels} is missing (set CONCEPTCLIP_DATA to the folder holding ph2/, "
                        "or get the public PH2 database from its authors)")
    samples = []
    with open(labels, newline="", encoding="utf-8") as fh:
        for i, row in enumerate(csv.DictReader(fh)):
            where = f"{labels}:row {i + 2}"
            diag = (row.get("diagnosis") or "").replace("_", " ")
            if diag not in PH2_CLASSES:
                raise DataError(f"{where}: unknown diagnosis {row.get('diagnosis')!r}; expected one of {PH2_CLASSES}")
            image = root / "images" / f"{row['id']}.jpg"
            if not image.is_file():
                raise DataError(f"{where}: image file not found: {image}")
            mask = root / "masks" / f"{row['id']}.png"
            attrs = {k: row.get(k, "") for k in (*CRITERIA, "colors")}
            samples.append(Sample(row["id"], image, label=PH2_CLASSES.index(diag), caption=caption(diag, attrs),
                                  mask=mask if mask.is_file() else None, attrs=attrs))
    return Dataset("ph2", list(PH2_CLASSES), samples, template=PH2_TEMPLATE, root=root)
