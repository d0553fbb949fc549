"""The concept-bank schema: class -> concepts, every entry with provenance, versioned and hashed.

A bank is plain data (frozen dataclasses) that serialises to one JSON layout::

    {
      "schema": "conceptclip.concept_bank", "schema_version": 1,
      "name": "ph2", "description": "...", "kind": "concepts",
      "content_hash": "sha256:<hex>",
      "sources": {"ph2": {"kind": "annotation", "citation": "...", "file": "labels.csv"}},
      "locations": ["trachea", ...],                       # optional vocabulary
      "classes": {"melanoma": {"concepts": [{"phrase": "blue-whitish veil", "source": "ph2",
                                             "frequency": 0.75, "count": 30}, ...]}}
    }

Provenance is stored once per source in `sources` and every concept names its source key, so a
bank of 30,000 prompts does not repeat the same citation 30,000 times. Optional fields are
omitted when unset (polarity when "positive"), which makes serialisation canonical: saving a
loaded bank gives back the same bytes. The content hash is the sha256 of the canonical JSON
(sorted keys, no whitespace, UTF-8) of `schema_version`, `kind`, `sources`, `locations` and
`classes`; `name` and `description` are labels and do not change it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Mapping

from conceptclip.errors import KnowledgeError
from conceptclip.io import write_text

SCHEMA_ID = "conceptclip.concept_bank"
SCHEMA_VERSION = 1
SOURCE_KINDS = ("annotation", "llm", "paper", "report_extraction")
POLARITIES = ("positive", "negative", "uncertain")
BANK_KINDS = ("concepts", "prompts")
"""`concepts`: short phrases to put into templates; `prompts`: complete sentences (ensembles)."""


@dataclass(frozen=True)
class Provenance:
    """Where entries came from. `model` is required for kind "llm"; `date` is ISO-8601."""

    kind: str
    citation: str
    file: str | None = None
    license: str | None = None
    model: str | None = None
    prompt: str | None = None
    date: str | None = None


@dataclass(frozen=True)
class Concept:
    """One entry of a class: a phrase plus optional description, location, rationale, and
    statistics (`frequency` in [0, 1] and `count` of supporting annotations)."""

    phrase: str
    source: str
    description: str | None = None
    location: str | None = None
    rationale: str | None = None
    polarity: str = "positive"
    frequency: float | None = None
    count: int | None = None


@dataclass(frozen=True)
class ClassEntry:
    concepts: tuple[Concept, ...] = ()
    description: str | None = None


@dataclass(frozen=True)
class ConceptBank:
    name: str
    sources: Mapping[str, Provenance]
    classes: Mapping[str, ClassEntry]
    kind: str = "concepts"
    description: str | None = None
    locations: tuple[str, ...] = ()
    schema_version: int = SCHEMA_VERSION

    # ---- views -------------------------------------------------------------------------
    @property
    def class_names(self) -> list[str]:
        return list(self.classes)

    def phrases(self, class_name: str) -> list[str]:
        return [c.phrase for c in self.classes[class_name].concepts]

    def as_dict_of_lists(self) -> dict[str, list[str]]:
        """{class: [phrase, ...]}: the layout most method code wants."""
        return {c: self.phrases(c) for c in self.classes}

    @property
    def n_concepts(self) -> int:
        return sum(len(e.concepts) for e in self.classes.values())

    @property
    def content_hash(self) -> str:
        return content_hash(self)

    def with_classes(self, classes: Mapping[str, ClassEntry], **changes: Any) -> "ConceptBank":
        """A copy with new classes; sources that no concept uses any more are dropped."""
        used = {c.source for e in classes.values() for c in e.concepts}
        sources = {k: v for k, v in self.sources.items() if k in used}
        return replace(self, classes=dict(classes), sources=sources, **changes)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"schema": SCHEMA_ID, "schema_version": self.schema_version, "name": self.name}
        if self.description is not None:
            out["description"] = self.description
        out["kind"] = self.kind
        out["content_hash"] = self.content_hash
        out.update(_content(self))
        if not self.locations:
            out.pop("locations")
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"


# ---- serialisation ----------------------------------------------------------------------
def _provenance_dict(p: Provenance) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": p.kind, "citation": p.citation}
    for key in ("file", "license", "model", "prompt", "date"):
        if getattr(p, key) is not None:
            out[key] = getattr(p, key)
    return out


def _concept_dict(c: Concept) -> dict[str, Any]:
    out: dict[str, Any] = {"phrase": c.phrase}
    for key in ("description", "location", "rationale"):
        if getattr(c, key) is not None:
            out[key] = getattr(c, key)
    if c.polarity != "positive":
        out["polarity"] = c.polarity
    if c.frequency is not None:
        out["frequency"] = c.frequency
    if c.count is not None:
        out["count"] = c.count
    out["source"] = c.source
    return out


def _class_dict(e: ClassEntry) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if e.description is not None:
        out["description"] = e.description
    out["concepts"] = [_concept_dict(c) for c in e.concepts]
    return out


def _content(bank: ConceptBank) -> dict[str, Any]:
    return {
        "sources": {k: _provenance_dict(v) for k, v in bank.sources.items()},
        "locations": list(bank.locations),
        "classes": {k: _class_dict(v) for k, v in bank.classes.items()},
    }


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8: the bytes the content hash is taken over."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def content_hash(bank: ConceptBank) -> str:
    payload = {"schema_version": bank.schema_version, "kind": bank.kind, **_content(bank)}
    return "sha256:" + hashlib.sha256(canonical_json(payload)).hexdigest()


# ---- validation -------------------------------------------------------------------------
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _key_path(parent: str, key: str) -> str:
    return f"{parent}.{key}" if _IDENT.match(key) else f"{parent}[{json.dumps(key, ensure_ascii=False)}]"


class _Checker:
    """Validates one parsed JSON document; every error names the file and the JSON path."""

    def __init__(self, file: str):
        self.file = file

    def fail(self, path: str, expected: str, got: Any) -> KnowledgeError:
        shown = json.dumps(got, ensure_ascii=False) if not isinstance(got, (dict, list)) else type(got).__name__
        if len(shown) > 60:
            shown = shown[:57] + "..."
        return KnowledgeError(f"{self.file}: {path}: expected {expected}, got {shown}")

    def obj(self, value: Any, path: str, required: Iterable[str], optional: Iterable[str]) -> dict:
        if not isinstance(value, dict):
            raise self.fail(path, "an object", value)
        required, allowed = list(required), set(required) | set(optional)
        for key in required:
            if key not in value:
                raise KnowledgeError(f"{self.file}: {path}: missing required key '{key}'")
        for key in value:
            if key not in allowed:
                raise KnowledgeError(
                    f"{self.file}: {_key_path(path, key)}: unexpected key (allowed: {', '.join(sorted(allowed))})"
                )
        return value

    def text(self, value: Any, path: str, optional: bool = False) -> str | None:
        if value is None and optional:
            return None
        if not isinstance(value, str) or not value.strip():
            raise self.fail(path, "a non-empty string", value)
        return value

    def choice(self, value: Any, path: str, options: tuple[str, ...]) -> str:
        if value not in options:
            raise self.fail(path, "one of " + "/".join(options), value)
        return value


def bank_from_dict(data: Any, file: str | os.PathLike = "<bank>", verify_hash: bool = True) -> ConceptBank:
    """Validate a parsed bank document and build the dataclasses (KnowledgeError on any fault)."""
    ck = _Checker(str(file))
    top = ck.obj(
        data,
        "$",
        ["schema", "schema_version", "name", "kind", "sources", "classes"],
        ["description", "content_hash", "locations"],
    )
    if top["schema"] != SCHEMA_ID:
        raise ck.fail("$.schema", f'"{SCHEMA_ID}"', top["schema"])
    version = top["schema_version"]
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ck.fail("$.schema_version", "a positive integer", version)
    if version > SCHEMA_VERSION:
        raise KnowledgeError(
            f"{file}: $.schema_version: {version} is newer than this conceptclip supports ({SCHEMA_VERSION}); upgrade"
        )
    name = ck.text(top["name"], "$.name")
    description = ck.text(top.get("description"), "$.description", optional=True)
    kind = ck.choice(top["kind"], "$.kind", BANK_KINDS)

    sources: dict[str, Provenance] = {}
    if not isinstance(top["sources"], dict):
        raise ck.fail("$.sources", "an object", top["sources"])
    for key, raw in top["sources"].items():
        path = _key_path("$.sources", key)
        ck.text(key, path + " (key)")
        ck.obj(raw, path, ["kind", "citation"], ["file", "license", "model", "prompt", "date"])
        src_kind = ck.choice(raw["kind"], path + ".kind", SOURCE_KINDS)
        opt = {k: ck.text(raw.get(k), f"{path}.{k}", optional=True) for k in ("file", "license", "model", "prompt", "date")}
        if src_kind == "llm" and opt["model"] is None:
            raise KnowledgeError(f"{file}: {path}.model: an 'llm' source must name its model")
        if opt["date"] is not None and not re.match(r"^\d{4}-\d{2}-\d{2}", opt["date"]):
            raise ck.fail(path + ".date", "an ISO date (YYYY-MM-DD...)", opt["date"])
        sources[key] = Provenance(kind=src_kind, citation=ck.text(raw["citation"], path + ".citation"), **opt)

    locations_raw = top.get("locations", [])
    if not isinstance(locations_raw, list):
        raise ck.fail("$.locations", "a list of strings", locations_raw)
    locations = tuple(ck.text(v, f"$.locations[{i}]") for i, v in enumerate(locations_raw))

    if not isinstance(top["classes"], dict):
        raise ck.fail("$.classes", "an object", top["classes"])
    classes: dict[str, ClassEntry] = {}
    for cname, raw_class in top["classes"].items():
        cpath = _key_path("$.classes", cname)
        ck.text(cname, cpath + " (class name)")
        ck.obj(raw_class, cpath, ["concepts"], ["description"])
        if not isinstance(raw_class["concepts"], list):
            raise ck.fail(cpath + ".concepts", "a list", raw_class["concepts"])
        concepts = [_concept_from(ck, raw, f"{cpath}.concepts[{i}]", sources) for i, raw in enumerate(raw_class["concepts"])]
        classes[cname] = ClassEntry(tuple(concepts), ck.text(raw_class.get("description"), cpath + ".description", True))

    bank = ConceptBank(
        name=name, sources=sources, classes=classes, kind=kind, description=description,
        locations=locations, schema_version=version,
    )
    stored = top.get("content_hash")
    if stored is not None:
        ck.text(stored, "$.content_hash")
        if verify_hash and stored != bank.content_hash:
            raise KnowledgeError(
                f"{file}: $.content_hash: file says {stored} but the content hashes to {bank.content_hash} "
                "(edited by hand? load with verify_hash=False and save again to re-hash)"
            )
    return bank


def _concept_from(ck: _Checker, raw: Any, path: str, sources: Mapping[str, Provenance]) -> Concept:
    ck.obj(raw, path, ["phrase", "source"],
           ["description", "location", "rationale", "polarity", "frequency", "count"])
    source = ck.text(raw["source"], path + ".source")
    if source not in sources:
        raise ck.fail(path + ".source", "a key of $.sources (" + ", ".join(sources) + ")", source)
    freq = raw.get("frequency")
    if freq is not None and (isinstance(freq, bool) or not isinstance(freq, (int, float)) or not 0.0 <= freq <= 1.0):
        raise ck.fail(path + ".frequency", "a number in [0, 1]", freq)
    count = raw.get("count")
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 0):
        raise ck.fail(path + ".count", "a non-negative integer", count)
    return Concept(
        phrase=ck.text(raw["phrase"], path + ".phrase"),
        source=source,
        description=ck.text(raw.get("description"), path + ".description", True),
        location=ck.text(raw.get("location"), path + ".location", True),
        rationale=ck.text(raw.get("rationale"), path + ".rationale", True),
        polarity=ck.choice(raw.get("polarity", "positive"), path + ".polarity", POLARITIES),
        frequency=None if freq is None else float(freq),
        count=count,
    )


def validate_bank(bank: ConceptBank) -> ConceptBank:
    """Check a bank built in code by the same rules as a file (round-trip through its dict)."""
    return bank_from_dict(json.loads(bank.to_json()), file=f"<bank {bank.name}>")


# ---- files ------------------------------------------------------------------------------
def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise KnowledgeError(f"duplicate key {json.dumps(key, ensure_ascii=False)}")
        out[key] = value
    return out


def load_bank(path: str | os.PathLike, verify_hash: bool = True) -> ConceptBank:
    """Read and validate a bank file (KnowledgeError naming the file and JSON path on faults)."""
    path = Path(path)
    if not path.is_file():
        raise KnowledgeError(f"{path}: concept bank file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as exc:
        raise KnowledgeError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except UnicodeDecodeError:
        raise KnowledgeError(f"{path}: not UTF-8 text") from None
    except RecursionError:
        raise KnowledgeError(f"{path}: not valid JSON (nested too deeply)") from None
    except KnowledgeError as exc:
        raise KnowledgeError(f"{path}: {exc}") from None
    return bank_from_dict(data, file=str(path), verify_hash=verify_hash)


def save_bank(bank: ConceptBank, path: str | os.PathLike) -> Path:
    """Validate and write atomically; `load_bank(save_bank(b, p))` gives `b` back and the same bytes."""
    text = bank.to_json()
    bank_from_dict(json.loads(text), file=f"<bank {bank.name}>")  # same checks as loading
    return write_text(path, text)


# ---- merge ------------------------------------------------------------------------------
def merge_banks(
    banks: Iterable[ConceptBank], name: str | None = None, description: str | None = None,
    drop_exact_duplicates: bool = True,
) -> ConceptBank:
    """Union of banks: classes in first-seen order, concepts concatenated. A source key used by
    two banks with different provenance is renamed `key.2`, `key.3`, ... Entries identical in
    every field (phrase, source, ...) are kept once when `drop_exact_duplicates`."""
    banks = list(banks)
    if not banks:
        raise KnowledgeError("merge_banks: no banks given")
    kinds = {b.kind for b in banks}
    if len(kinds) > 1:
        raise KnowledgeError(f"merge_banks: cannot merge banks of different kinds {sorted(kinds)}")
    sources: dict[str, Provenance] = {}
    classes: dict[str, list[Concept]] = {}
    class_desc: dict[str, str | None] = {}
    seen: dict[str, set[Concept]] = {}
    locations: list[str] = []
    for bank in banks:
        rename: dict[str, str] = {}
        for key, prov in bank.sources.items():
            new, n = key, 1
            while new in sources and sources[new] != prov:
                n += 1
                new = f"{key}.{n}"
            sources[new] = prov
            rename[key] = new
        for loc in bank.locations:
            if loc not in locations:
                locations.append(loc)
        for cname, entry in bank.classes.items():
            bucket = classes.setdefault(cname, [])
            seen.setdefault(cname, set())
            if class_desc.get(cname) is None:
                class_desc[cname] = entry.description
            for c in entry.concepts:
                c = replace(c, source=rename[c.source])
                if drop_exact_duplicates and c in seen[cname]:
                    continue
                seen[cname].add(c)
                bucket.append(c)
    merged = ConceptBank(
        name=name or "+".join(b.name for b in banks),
        sources=sources,
        classes={k: ClassEntry(tuple(v), class_desc.get(k)) for k, v in classes.items()},
        kind=banks[0].kind,
        description=description,
        locations=tuple(locations),
    )
    return merged.with_classes(merged.classes)


def simple_bank(
    name: str, classes: Mapping[str, Iterable[str]], source: Provenance, source_key: str = "source",
    kind: str = "concepts", description: str | None = None, locations: Iterable[str] = (),
) -> ConceptBank:
    """Build a bank from `{class: [phrase, ...]}` with one provenance for every entry."""
    entries = {
        cname: ClassEntry(tuple(Concept(phrase=p, source=source_key) for p in phrases))
        for cname, phrases in classes.items()
    }
    return ConceptBank(
        name=name, sources={source_key: source}, classes=entries, kind=kind,
        description=description, locations=tuple(locations),
    )


__all__ = [
    "SCHEMA_ID", "SCHEMA_VERSION", "SOURCE_KINDS", "POLARITIES", "BANK_KINDS",
    "Provenance", "Concept", "ClassEntry", "ConceptBank",
    "bank_from_dict", "validate_bank", "load_bank", "save_bank", "merge_banks", "simple_bank",
    "content_hash", "canonical_json",
]
