"""Skin-lesion concept banks from expert annotations: PH2 criteria, Derm7pt, SkinCon.

Per image, each annotated criterion becomes a phrase (PH2: "atypical pigment network",
"blue-whitish veil", ...). Per diagnosis, a criterion is a class concept when it is present in at
least `min_frequency` of that class's images; the bank records `frequency` = present / images of
the class and `count` = present, sorted by frequency (ties keep the criterion order below).
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from pathlib import Path
from typing import Iterable, Mapping

from conceptclip.errors import KnowledgeError
from conceptclip.knowledge.schema import ClassEntry, Concept, ConceptBank, Provenance

# PH2 labels.csv column -> {value: phrase}; values not listed (e.g. "absent") add no phrase.
PH2_CRITERIA: dict[str, dict[str, str]] = {
    "asymmetry": {
        "fully_symmetric": "symmetric shape",
        "symmetric_one_axis": "asymmetry in one axis",
        "fully_asymmetric": "asymmetry",
    },
    "pigment_network": {"typical": "typical pigment network", "atypical": "atypical pigment network"},
    "dots_globules": {"typical": "typical dots and globules", "atypical": "atypical dots and globules"},
    "streaks": {"present": "irregular streaks"},  # PH2 codes streaks present/absent; CBVLM maps present -> ISTR
    "regression_areas": {"present": "regression areas"},
    "blue_whitish_veil": {"present": "blue-whitish veil"},
}
PH2_ALLOWED = {
    "asymmetry": {"fully_symmetric", "symmetric_one_axis", "fully_asymmetric"},
    "pigment_network": {"typical", "atypical"},
    "dots_globules": {"absent", "typical", "atypical"},
    "streaks": {"absent", "present"},
    "regression_areas": {"absent", "present"},
    "blue_whitish_veil": {"absent", "present"},
}
PH2_COLOURS = {
    "white": "white colour", "red": "red colour", "light_brown": "light-brown colour",
    "dark_brown": "dark-brown colour", "blue_gray": "blue-grey colour", "black": "black colour",
}
MULTIPLE_COLOURS = "multiple colours"
MULTIPLE_COLOURS_MIN = 3  # "multiple colours" = three or more of the six PH2 colours
PH2_DIAGNOSES = ("common_nevus", "atypical_nevus", "melanoma")
PH2_PROVENANCE = Provenance(
    kind="annotation",
    citation="PH2 database, Mendonca et al., EMBC 2013 (per-image dermoscopic criteria of PH2_dataset.txt)",
    file="ph2/labels.csv",
    license="research use as distributed by the PH2 authors; do not redistribute",
)

# Derm7pt column -> {code: phrase} (codes as in CBVLM src/data/derm7pt_dataset.py).
DERM7PT_CRITERIA: dict[str, dict[str, str]] = {
    "PN": {"1": "typical pigment network", "2": "atypical pigment network"},
    "STR": {"1": "regular streaks", "2": "irregular streaks"},
    "DG": {"1": "regular dots and globules", "2": "irregular dots and globules"},
    "BWV": {"1": "blue-whitish veil"},
    "RS": {"1": "regression structures"},
}
DERM7PT_CLASSES = {"0": "nevus", "1": "melanoma"}
DERM7PT_PROVENANCE = Provenance(
    kind="annotation",
    citation="Derm7pt (Kawahara et al., IEEE JBHI 2019) criteria as split by CBVLM "
    "(GitHub CristianoPatricio/CBVLM, data/splits/)",
    file="concepts/derm7pt/dermoscopic_concepts_Derm7pt_all.csv",
    license="Apache-2.0 (CBVLM split files); Derm7pt terms apply",
)
SKINCON_CLASSES = {"0": "benign", "1": "malignant"}
SKINCON_EXCLUDE = "Do not consider this image"
SKINCON_PROVENANCE = Provenance(
    kind="annotation",
    citation="SkinCon (Daneshjou et al., NeurIPS 2022) on Fitzpatrick17k (Groh et al., CVPR-W 2021), "
    "files from GitHub CristianoPatricio/CBVLM",
    file="concepts/skincon/fitzpatrick17k_skincon_annotations.csv",
    license="Apache-2.0 (CBVLM split files); SkinCon/Fitzpatrick17k terms apply",
)


def _read_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    path = Path(path)
    if not path.is_file():
        raise KnowledgeError(f"{path}: annotation file not found")
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _phrase_order() -> list[str]:
    order = [p for mapping in PH2_CRITERIA.values() for p in mapping.values()]
    return order + list(PH2_COLOURS.values()) + [MULTIPLE_COLOURS]


def ph2_concepts_per_image(labels_csv: str | os.PathLike) -> dict[str, list[str]]:
    """{image id: present criteria as phrases} from PH2 labels.csv, in a fixed criterion order
    (the per-image rationale truth ECOR scores against)."""
    rows = _read_csv(labels_csv)
    out: dict[str, list[str]] = {}
    for i, row in enumerate(rows, start=2):
        phrases: list[str] = []
        for col, mapping in PH2_CRITERIA.items():
            value = (row.get(col) or "").strip()
            if value not in PH2_ALLOWED[col]:
                raise KnowledgeError(
                    f"{labels_csv}: line {i}, column {col}: expected one of {sorted(PH2_ALLOWED[col])}, got {value!r}"
                )
            if value in mapping:
                phrases.append(mapping[value])
        colours = [c for c in (row.get("colors") or "").split(";") if c]
        for c in colours:
            if c not in PH2_COLOURS:
                raise KnowledgeError(f"{labels_csv}: line {i}, column colors: unknown colour {c!r}")
        phrases += [PH2_COLOURS[c] for c in PH2_COLOURS if c in colours]
        if len(set(colours)) >= MULTIPLE_COLOURS_MIN:
            phrases.append(MULTIPLE_COLOURS)
        out[row["id"]] = phrases
    return out


def ph2_diagnoses(labels_csv: str | os.PathLike) -> dict[str, str]:
    out = {}
    for i, row in enumerate(_read_csv(labels_csv), start=2):
        if row.get("diagnosis") not in PH2_DIAGNOSES:
            raise KnowledgeError(f"{labels_csv}: line {i}, column diagnosis: expected one of {PH2_DIAGNOSES}, got {row.get('diagnosis')!r}")
        out[row["id"]] = row["diagnosis"]
    return out


def frequency_bank(
    name: str, per_image: Mapping[str, Iterable[str]], labels: Mapping[str, str], class_order: Iterable[str],
    provenance: Provenance, source_key: str, min_frequency: float, phrase_order: list[str] | None = None,
    description: str | None = None,
) -> ConceptBank:
    """Class -> concepts present in >= `min_frequency` of its images, with frequency and count."""
    if not 0.0 <= min_frequency <= 1.0:
        raise KnowledgeError(f"min_frequency: expected a number in [0, 1], got {min_frequency}")
    classes = {}
    for cls in class_order:
        ids = [i for i, lab in labels.items() if lab == cls and i in per_image]
        counts = Counter(p for i in ids for p in dict.fromkeys(per_image[i]))
        rank = {p: k for k, p in enumerate(phrase_order or sorted(counts))}
        concepts = []
        for phrase, n in sorted(counts.items(), key=lambda kv: (-kv[1], rank.get(kv[0], len(rank)), kv[0])):
            freq = n / len(ids)
            if freq >= min_frequency and n > 0:
                concepts.append(Concept(phrase=phrase, source=source_key, frequency=round(freq, 6), count=n))
        classes[cls.replace("_", " ")] = ClassEntry(tuple(concepts), description=f"{len(ids)} annotated images")
    return ConceptBank(name=name, sources={source_key: provenance}, classes=classes, kind="concepts",
                       description=description)


def ph2_bank(labels_csv: str | os.PathLike, min_frequency: float = 0.25,
             ids: Iterable[str] | None = None) -> ConceptBank:
    """PH2 diagnosis (common nevus / atypical nevus / melanoma) -> criteria phrases present in at
    least `min_frequency` (default a quarter) of its images; with `ids`, of those images only (e.g.
    a split's train pool, so that test images never shape the concept lists)."""
    per_image, labels = ph2_concepts_per_image(labels_csv), ph2_diagnoses(labels_csv)
    scope = "the class's images"
    if ids is not None:
        keep = set(ids)
        unknown = sorted(keep - set(per_image))
        if unknown:
            raise KnowledgeError(f"{labels_csv}: ids not in PH2: {unknown[:5]}{' ...' if len(unknown) > 5 else ''}")
        per_image = {k: v for k, v in per_image.items() if k in keep}
        labels = {k: v for k, v in labels.items() if k in keep}
        scope = f"the class's images among {len(keep)} given ids"
    return frequency_bank(
        "ph2", per_image, labels, PH2_DIAGNOSES, PH2_PROVENANCE, "ph2", min_frequency, _phrase_order(),
        f"PH2 dermoscopic criteria per diagnosis (present in >= {min_frequency:g} of {scope})",
    )


def derm7pt_concepts_per_image(folder: str | os.PathLike) -> dict[str, list[str]]:
    """{Derm7pt image id: present criteria phrases} from dermoscopic_concepts_Derm7pt_all.csv."""
    path = Path(folder) / "dermoscopic_concepts_Derm7pt_all.csv"
    out = {}
    for i, row in enumerate(_read_csv(path), start=2):
        phrases = []
        for col, mapping in DERM7PT_CRITERIA.items():
            value = (row.get(col) or "").strip()
            if value not in {"0", *mapping}:
                raise KnowledgeError(f"{path}: line {i}, column {col}: expected one of 0/{'/'.join(mapping)}, got {value!r}")
            if value in mapping:
                phrases.append(mapping[value])
        out[row["image_id"]] = phrases
    return out


def derm7pt_labels(folder: str | os.PathLike) -> dict[str, str]:
    """{image id: "nevus" | "melanoma"} from the train/validation/test split files."""
    labels = {}
    for split in ("train", "validation", "test"):
        path = Path(folder) / f"derm7pt_{split}.csv"
        for i, row in enumerate(_read_csv(path), start=2):
            if row.get("labels") not in DERM7PT_CLASSES:
                raise KnowledgeError(f"{path}: line {i}, column labels: expected 0 or 1, got {row.get('labels')!r}")
            labels[row["images"]] = DERM7PT_CLASSES[row["labels"]]
    return labels


def derm7pt_bank(folder: str | os.PathLike, min_frequency: float = 0.25) -> ConceptBank:
    order = [p for m in DERM7PT_CRITERIA.values() for p in m.values()]
    return frequency_bank(
        "derm7pt", derm7pt_concepts_per_image(folder), derm7pt_labels(folder), DERM7PT_CLASSES.values(),
        DERM7PT_PROVENANCE, "derm7pt", min_frequency, order,
        f"Derm7pt criteria per diagnosis (present in >= {min_frequency:g} of the class's images)",
    )


def _skincon_phrase(column: str) -> str:
    return column.replace("(", " (").lower()


def skincon_concepts_per_image(folder: str | os.PathLike) -> dict[str, list[str]]:
    """{Fitzpatrick17k md5 id: present SkinCon concepts}; images flagged "Do not consider" are left out."""
    path = Path(folder) / "fitzpatrick17k_skincon_annotations.csv"
    rows = _read_csv(path)
    if not rows:
        raise KnowledgeError(f"{path}: no rows")
    columns = [c for c in rows[0] if c not in ("", "ImageID", SKINCON_EXCLUDE)]
    out = {}
    for i, row in enumerate(rows, start=2):
        if row.get(SKINCON_EXCLUDE) == "1":
            continue
        for c in columns:
            if row[c] not in ("0", "1"):
                raise KnowledgeError(f"{path}: line {i}, column {c}: expected 0 or 1, got {row[c]!r}")
        out[row["ImageID"].removesuffix(".jpg")] = [_skincon_phrase(c) for c in columns if row[c] == "1"]
    return out


def skincon_labels(folder: str | os.PathLike) -> dict[str, str]:
    """{md5 id: "benign" | "malignant"} from SkinCon_{train,val,test}.csv (`benign_malignant`)."""
    labels = {}
    for split in ("train", "val", "test"):
        path = Path(folder) / f"SkinCon_{split}.csv"
        for i, row in enumerate(_read_csv(path), start=2):
            value = row.get("benign_malignant")
            if value not in SKINCON_CLASSES:
                raise KnowledgeError(f"{path}: line {i}, column benign_malignant: expected 0 or 1, got {value!r}")
            labels[Path(row["img_path"]).stem] = SKINCON_CLASSES[value]
    return labels


def skincon_attribute_order(folder: str | os.PathLike) -> list[str]:
    """Column order of the annotation file, as phrases (the 48 SkinCon concepts)."""
    rows = _read_csv(Path(folder) / "fitzpatrick17k_skincon_annotations.csv")
    return [_skincon_phrase(c) for c in rows[0] if c not in ("", "ImageID", SKINCON_EXCLUDE)]


def skincon_bank(folder: str | os.PathLike, min_frequency: float = 0.1) -> ConceptBank:
    """benign / malignant -> SkinCon concepts present in >= `min_frequency` (default 10%: SkinCon
    images carry about two of 48 concepts each, so a quarter would leave three concepts)."""
    return frequency_bank(
        "skincon", skincon_concepts_per_image(folder), skincon_labels(folder), SKINCON_CLASSES.values(),
        SKINCON_PROVENANCE, "skincon", min_frequency, skincon_attribute_order(folder),
        f"SkinCon concepts per benign/malignant (present in >= {min_frequency:g} of the class's images)",
    )

