"""Reports -> what RC-TPL trains on: per report a global text, a set of region texts and labels.

Triplets come from `knowledge.triplets` (the rule-based extractor); each becomes a
knowledge-injected sentence (Sec. "knowledge injection"):

    positive   "There is {concept}. {first sentence of its MedKLIP description} It is located in {location}."
    uncertain  "There may be {concept}. {description} It is located in {location}."
    negative   "There is no {concept}."

(the description and the location are left out when unknown or switched off; a negated finding
gets neither, since both would describe something the report says is absent). The report's
sentences that carry no triplet ("The lungs are clear.") are kept as further regions, so a
normal report still has regions and abnormal ones have normal-looking distractors, as an image
has normal patches.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import torch

from conceptclip.errors import ConfigError, DataError
from conceptclip.knowledge.triplets import Triplet, extract_triplets, location_phrase, split_sentences
from conceptclip.knowledge.resolve import name_key

LEADS = {"positive": "There is", "negative": "There is no", "uncertain": "There may be"}
UNCERTAIN_POLICIES = ("ignore", "positive", "negative")
NO_FINDING = ("no finding", "normal", "no findings")
NO_FINDING_KEYS = frozenset(name_key(n) for n in NO_FINDING)  # as `_key` writes them


@dataclass(frozen=True)
class InjectionConfig:
    """How triplets become region sentences and which sentences are regions."""

    description: bool = True  # inject the concept's MedKLIP description
    description_sentences: int = 1  # first N sentences of it (keeps texts inside CLIP's 77 tokens)
    location: bool = True  # inject "It is located in {location}."
    location_template: str = "It is located in {location}."
    plain_sentences: bool = True  # keep the report's sentences without any triplet as regions
    max_regions: int = 32
    sections: tuple[str, ...] = ("findings", "impression")


@dataclass(frozen=True)
class ReportItem:
    """One report: `text` (global), `regions` (local texts) and its concepts by polarity."""

    id: str
    text: str
    regions: tuple[str, ...]
    positive: frozenset[str] = field(default_factory=frozenset)
    negative: frozenset[str] = field(default_factory=frozenset)
    uncertain: frozenset[str] = field(default_factory=frozenset)


def _first_sentences(text: str, n: int) -> str:
    parts = [p.strip() for p in re.split(r"(?<=[.!?])\s+", " ".join(text.split())) if p.strip()]
    out = " ".join(parts[:n]) if n > 0 else ""
    return out if not out or out[-1] in ".!?" else out + "."


def _has_words(sentence: str) -> bool:
    """A sentence worth a region: some word of 3+ letters besides IU X-Ray's "XXXX" mask
    (drops list numbers such as "2." and fully masked sentences)."""
    return any(w.lower() != "xxxx" for w in re.findall(r"[A-Za-z]{3,}", sentence))


def medklip_descriptions(root: str | os.PathLike | None = None) -> dict[str, str]:
    """{concept: description} from the MedKLIP observation bank (the knowledge of the injection)."""
    from conceptclip.knowledge.loaders import medklip_bank

    bank = medklip_bank(root)
    return {name: entry.concepts[0].description or "" for name, entry in bank.classes.items() if entry.concepts}


def knowledge_sentence(t: Triplet, descriptions: Mapping[str, str], cfg: InjectionConfig = InjectionConfig()) -> str:
    """The knowledge-injected sentence of one triplet (see the module docstring)."""
    concept = t.concept.replace("_", " ")
    text = f"{LEADS[t.polarity]} {concept}."
    if t.polarity == "negative":
        return text
    if cfg.description and cfg.description_sentences > 0 and descriptions.get(t.concept):
        text += " " + _first_sentences(descriptions[t.concept], cfg.description_sentences)
    if cfg.location and t.location:
        text += " " + cfg.location_template.format(location=location_phrase(t.location))
    return text


def report_item(report_id: str, sections: Mapping[str, str], descriptions: Mapping[str, str],
                cfg: InjectionConfig = InjectionConfig()) -> ReportItem | None:
    """Build one item from the report's sections (None for a report without text)."""
    texts = [(sec, " ".join((sections.get(sec) or "").split())) for sec in cfg.sections]
    texts = [(s, t) for s, t in texts if t]
    if not texts:
        return None
    regions: list[str] = []
    pos, neg, unc = set(), set(), set()
    for sec, text in texts:
        for k, sentence in enumerate(split_sentences(text)):
            found = extract_triplets(sentence, section=sec)
            if not found and cfg.plain_sentences and _has_words(sentence):
                regions.append(sentence)
            for t in found:
                regions.append(knowledge_sentence(t, descriptions, cfg))
                {"positive": pos, "negative": neg, "uncertain": unc}[t.polarity].add(t.concept)
    regions = list(dict.fromkeys(regions))[: cfg.max_regions] or [texts[0][1]]
    unc -= pos  # stated as present somewhere in the report: present
    neg -= pos | unc
    return ReportItem(report_id, " ".join(t for _, t in texts), tuple(regions), frozenset(pos), frozenset(neg),
                      frozenset(unc))


def read_reports(path: str | os.PathLike, limit: int | None = None) -> list[tuple[str, dict]]:
    """(id, record) of a JSONL report file (IU X-Ray layout: `id`, `findings`, `impression`)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: reports file not found (IU X-Ray: ../shared/data/iuxray/reports.jsonl)")
    out = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}: line {lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(rec, dict) or "id" not in rec:
                raise DataError(f"{path}: line {lineno}: expected an object with an 'id'")
            for key in ("findings", "impression"):
                if rec.get(key) is not None and not isinstance(rec[key], str):
                    raise DataError(f"{path}: line {lineno}: {key!r} must be a string")
            out.append((str(rec["id"]), rec))
            if limit is not None and len(out) >= limit:
                break
    if not out:
        raise DataError(f"{path}: no reports")
    return out


def build_corpus(path: str | os.PathLike, cfg: InjectionConfig = InjectionConfig(),
                 descriptions: Mapping[str, str] | None = None, limit: int | None = None) -> list[ReportItem]:
    """Items of every report with text in a JSONL file (descriptions default to MedKLIP's)."""
    if descriptions is None:
        descriptions = medklip_descriptions() if cfg.description else {}
    items = [report_item(rid, rec, descriptions, cfg) for rid, rec in read_reports(path, limit)]
    return [it for it in items if it is not None]


def concept_counts(items: Iterable[ReportItem]) -> dict[str, int]:
    """Number of reports with each concept positive, most frequent first (ties by name)."""
    counts: dict[str, int] = {}
    for it in items:
        for c in it.positive:
            counts[c] = counts.get(c, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def select_classes(items: Sequence[ReportItem], min_reports: int = 30, classes: Sequence[str] | None = None) -> list[str]:
    """The training classes: `classes` as given (each must be a concept found in the reports, or
    "normal"/"no finding"), else every concept positive in at least `min_reports` reports."""
    counts = concept_counts(items)
    if classes:
        known = set(counts) | set(NO_FINDING)
        bad = [c for c in classes if _key(c) not in {_key(k) for k in known}]
        if bad:
            raise ConfigError(f"classes {bad} are not concepts found in the reports; known (by frequency): "
                              f"{', '.join(list(counts)[:40])}")
        return [c for c in classes]
    chosen = [c for c, n in counts.items() if n >= min_reports]
    if len(chosen) < 2:
        raise ConfigError(f"only {len(chosen)} concept(s) are positive in at least {min_reports} reports; "
                          "lower min_reports or name the classes")
    return chosen


def _key(name: str) -> str:
    """RC-TPL's class names are matched like every method's (`knowledge.resolve.name_key`)."""
    return name_key(name)


def label_matrix(items: Sequence[ReportItem], classes: Sequence[str],
                 uncertain: str = "ignore") -> tuple[torch.Tensor, torch.Tensor]:
    """labels (N, C) float in {0, 1} and mask (N, C) bool of known labels: positive -> 1,
    negative or absent -> 0, uncertain -> per `uncertain` ("ignore": masked out). A class named
    "normal"/"no finding" is positive exactly when the report has no positive (or, with
    "ignore", uncertain) concept."""
    if uncertain not in UNCERTAIN_POLICIES:
        raise ConfigError(f"uncertain={uncertain!r}: expected one of {UNCERTAIN_POLICIES}")
    keys = [_key(c) for c in classes]
    labels = torch.zeros(len(items), len(classes))
    mask = torch.ones(len(items), len(classes), dtype=torch.bool)
    for i, it in enumerate(items):
        pos = {_key(c) for c in it.positive}
        unc = {_key(c) for c in it.uncertain}
        if uncertain == "positive":
            pos |= unc
        for j, k in enumerate(keys):
            if k in NO_FINDING_KEYS:
                labels[i, j] = float(not pos)
                mask[i, j] = not (uncertain == "ignore" and unc and not pos)
            elif k in pos:
                labels[i, j] = 1.0
            elif k in unc and uncertain == "ignore":
                mask[i, j] = False
    return labels, mask
