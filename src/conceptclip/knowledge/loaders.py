"""Loaders that turn the public banks in `shared_data_dir()/banks` into `ConceptBank`s.

Every loader reads the files unchanged and records where they came from (repository, commit,
file, licence as stated by the source). `load_shared_bank("biomedcoop/BUSI")` and
`list_shared_banks()` give one name per bank; the skin-annotation banks live in `skin.py` and are
registered here too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Collection

from conceptclip.errors import KnowledgeError
import conceptclip.knowledge.skin as skin
from conceptclip.knowledge.schema import ClassEntry, Concept, ConceptBank, Provenance
from conceptclip.paths import shared_data_dir

NOT_STATED = "not stated in the source"

# Repository, commit and licence of each folder, as written in its README.
ORIGINS: dict[str, dict[str, str]] = {
    "biomedcoop": {
        "citation": "GitHub HealthX-Lab/BiomedCoOp@7ceb5a89ce4c2ff110b11605f858ab2ca0c8573e, "
        "trainers/prompt_templates.py (BIOMEDCOOP_TEMPLATES); Koleilat et al., BiomedCoOp, CVPR 2025",
        "license": "MIT",
    },
    "deal": {
        "citation": "GitHub tangli-udel/DEAL@9b2cc057090e2f3bfae6c1c871f1a009456b8a87, descriptors/; "
        "Li, Ma, Peng, DEAL, ECCV 2024",
        "license": "MIT",
    },
    "dror": {
        "citation": "GitHub deep-real/DCP@51a046c11a9271b160947aa53de6e496611ebb02; Li, Ma, Peng, "
        "Beyond Accuracy: Ensuring Correct Predictions With Correct Rationales, NeurIPS 2024",
        "license": "no license file in the source repository",
    },
    "medklip": {
        "citation": "GitHub MediaBrain-SJTU/MedKLIP@8e60b035ddc160f44a389f476b596f1052f02d8f, PreTrain_MedKLIP; "
        "Wu et al., MedKLIP, ICCV 2023",
        "license": "no license file in the source repository",
    },
    "cupl": {
        "citation": "GitHub sarahpratt/CuPL@719619c829792ff8f37298266e941b7f077c7f5c, "
        "all_prompts/base_prompts/imagenet_prompts_base.json; Pratt et al., CuPL, ICCV 2023",
        "license": "no license file in the source repository",
    },
}


def banks_dir(root: str | os.PathLike | None = None) -> Path:
    return Path(root) if root is not None else shared_data_dir() / "banks"


def read_json(path: Path) -> Any:
    if not path.is_file():
        raise KnowledgeError(f"{path}: bank source file not found (see docs/knowledge.md for where to get it)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise KnowledgeError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None


def _class_lists(path: Path) -> dict[str, list[str]]:
    """Read `{class: [string, ...]}` and check its shape."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise KnowledgeError(f"{path}: $: expected an object {{class: [text, ...]}}, got {type(data).__name__}")
    for cname, items in data.items():
        if not isinstance(items, list) or not all(isinstance(x, str) for x in items):
            raise KnowledgeError(f"{path}: $[{json.dumps(cname)}]: expected a list of strings")
    return data


def _prov(origin: str, kind: str, file: str, model: str | None = None, note: str = "") -> Provenance:
    o = ORIGINS[origin]
    return Provenance(kind=kind, citation=o["citation"] + note, file=file, license=o["license"], model=model)


def _from_lists(name: str, lists: dict[str, list[str]], prov: Provenance, kind: str, description: str,
                order: list[str] | None = None) -> ConceptBank:
    key = name.split("/")[0]
    order = order or list(lists)
    classes = {c: ClassEntry(tuple(Concept(phrase=p, source=key) for p in lists[c])) for c in order}
    return ConceptBank(name=name, sources={key: prov}, classes=classes, kind=kind, description=description)


# ---- BiomedCoOp --------------------------------------------------------------------------
BIOMEDCOOP_DATASETS = ("BTMRI", "BUSI", "CHMNIST", "COVID_19", "CTKidney", "DermaMNIST", "KneeXray",
                       "Kvasir", "LungColon", "OCTMNIST", "RETINA")


def biomedcoop_classnames(root: str | os.PathLike | None = None) -> dict[str, list[str]]:
    """{dataset: [class names in label order]} from classnames.json."""
    return _class_lists(banks_dir(root) / "biomedcoop" / "classnames.json")


def biomedcoop_bank(dataset: str, root: str | os.PathLike | None = None) -> ConceptBank:
    """The 50-prompt LLM ensembles of one dataset (`_other_classes` for the 16 extra classes),
    classes in label order. Duplicate prompts are kept as in the source; prune them explicitly."""
    folder = banks_dir(root) / "biomedcoop"
    lists = _class_lists(folder / "prompts" / f"{dataset}.json")
    order = None
    if dataset != "_other_classes":
        names = biomedcoop_classnames(root)
        if dataset not in names:
            raise KnowledgeError(f"{folder / 'classnames.json'}: no class list for dataset {dataset!r}")
        order = names[dataset]
        if set(order) != set(lists):
            raise KnowledgeError(
                f"{folder / 'prompts' / (dataset + '.json')}: classes {sorted(lists)} differ from classnames.json {sorted(order)}"
            )
    prov = _prov("biomedcoop", "llm", f"prompts/{dataset}.json", model=NOT_STATED)
    return _from_lists(f"biomedcoop/{dataset}", lists, prov, "prompts",
                       f"BiomedCoOp LLM prompt ensemble for {dataset}", order)


# ---- DEAL and DROR/DCP -------------------------------------------------------------------
def _stem(path: Path) -> str:
    return path.stem[3:] if path.stem.startswith("my_") else path.stem


def deal_bank(dataset: str, root: str | os.PathLike | None = None) -> ConceptBank:
    """DEAL class -> six visual concepts (LLM-generated), e.g. dataset "imagenet", "cub"."""
    path = banks_dir(root) / "deal" / f"my_{dataset}.json"
    prov = _prov("deal", "llm", path.name, model=NOT_STATED)
    return _from_lists(f"deal/{dataset}", _class_lists(path), prov, "concepts", f"DEAL concept list for {dataset}")


def dror_descriptor_bank(dataset: str, root: str | os.PathLike | None = None) -> ConceptBank:
    """DCP class -> visual concept list (LLM-generated), e.g. dataset "cifar10"."""
    path = banks_dir(root) / "dror" / "descriptors" / f"my_{dataset}.json"
    prov = _prov("dror", "llm", f"descriptors/{path.name}", model=NOT_STATED)
    return _from_lists(f"dror/{dataset}", _class_lists(path), prov, "concepts", f"DCP concept list for {dataset}")


def _graph_concepts(cname: str, graph: Any, path: Path) -> list[Concept]:
    """Parts of the class (targets of the root's edges) become concepts; the edges below each
    part are verbalised ("hook is large") into its rationale, in source order."""
    if not isinstance(graph, dict) or not isinstance(graph.get("nodes"), list) or not isinstance(graph.get("edges"), list):
        raise KnowledgeError(f"{path}: $[{json.dumps(cname)}]: expected {{'nodes': [...], 'edges': [...]}}")
    labels = {n["id"]: n.get("label", n["id"]) for n in graph["nodes"] if isinstance(n, dict) and "id" in n}
    edges = []
    for i, e in enumerate(graph["edges"]):
        target = e.get("target", e.get("taget")) if isinstance(e, dict) else None  # one edge spells it "taget"
        if target is None or "source" not in e:
            raise KnowledgeError(f"{path}: $[{json.dumps(cname)}].edges[{i}]: expected source/target/relation")
        edges.append((e["source"], e.get("relation", "has"), target))
    targets = {t for _, _, t in edges}
    roots = [s for s, _, _ in edges if s not in targets]
    roots = list(dict.fromkeys(roots))
    parts: list[str] = []
    for s, _, t in edges:
        if s in roots and t not in parts:
            parts.append(t)
    owner: dict[str, str] = {p: p for p in parts}
    changed = True
    while changed:  # attach deeper nodes to the part they hang from
        changed = False
        for s, _, t in edges:
            if s in owner and t not in owner:
                owner[t] = owner[s]
                changed = True
    facts: dict[str, list[str]] = {p: [] for p in parts}
    orphans: list[tuple[str, str]] = []
    for s, r, t in edges:
        if s in roots:
            continue
        sentence = f"{labels.get(s, s)} {r} {labels.get(t, t)}".lower()
        if s in owner:
            facts[owner[s]].append(sentence)
        else:
            orphans.append((s, sentence))
    out = [Concept(phrase=labels.get(p, p).lower(), source="dror", rationale="; ".join(facts[p]) or None) for p in parts]
    for s, sentence in orphans:
        out.append(Concept(phrase=labels.get(s, s).lower(), source="dror", rationale=sentence))
    return out


def dror_rationale_bank(root: str | os.PathLike | None = None) -> ConceptBank:
    """DROR ImageNet rationale graphs: one concept per part with its verbalised attributes."""
    path = banks_dir(root) / "dror" / "rationale_imagenet.json"
    data = read_json(path)
    if not isinstance(data, dict):
        raise KnowledgeError(f"{path}: $: expected an object {{class: graph}}")
    prov = _prov("dror", "llm", path.name, model=NOT_STATED)
    classes = {c: ClassEntry(tuple(_graph_concepts(c, g, path))) for c, g in data.items()}
    return ConceptBank(name="dror/rationale_imagenet", sources={"dror": prov}, classes=classes, kind="concepts",
                       description="DROR ImageNet rationales: part -> attribute facts")


# ---- MedKLIP -----------------------------------------------------------------------------
MEDKLIP_KEY_FIXES = {"pneumonia": "eumonia"}  # the explanation file spells this key without the "pn"


def medklip_observations(root: str | os.PathLike | None = None) -> list[str]:
    return list(read_json(banks_dir(root) / "medklip" / "observations.json"))


def medklip_locations(root: str | os.PathLike | None = None) -> list[str]:
    return list(read_json(banks_dir(root) / "medklip" / "anatomy_locations.json"))


def medklip_bank(root: str | os.PathLike | None = None) -> ConceptBank:
    """75 chest X-ray observations (classes, in index order), each with its "disease book"
    description, plus the 51 anatomical locations as the bank's location vocabulary."""
    folder = banks_dir(root) / "medklip"
    observations = medklip_observations(root)
    explanations = read_json(folder / "observation_explanation.json")
    classes = {}
    for obs in observations:
        key = obs if obs in explanations else MEDKLIP_KEY_FIXES.get(obs, obs)
        if key not in explanations:
            raise KnowledgeError(f"{folder / 'observation_explanation.json'}: no description for observation {obs!r}")
        classes[obs] = ClassEntry((Concept(phrase=obs.replace("_", " "), source="medklip", description=explanations[key]),))
    prov = _prov("medklip", "paper", "observations.json, observation_explanation.json, anatomy_locations.json")
    return ConceptBank(name="medklip/observations", sources={"medklip": prov}, classes=classes, kind="concepts",
                       description="MedKLIP chest X-ray observations with descriptions and 51 anatomical locations",
                       locations=tuple(medklip_locations(root)))


# ---- CuPL --------------------------------------------------------------------------------
def cupl_bank(root: str | os.PathLike | None = None) -> ConceptBank:
    path = banks_dir(root) / "cupl" / "imagenet_prompts_base.json"
    prov = _prov("cupl", "llm", path.name, model="text-davinci-002")
    return _from_lists("cupl/imagenet", _class_lists(path), prov, "prompts", "CuPL GPT-3 prompts for ImageNet")


# ---- registry ----------------------------------------------------------------------------
def _ph2_bank(labels: Path, exclude: Collection[str] | None) -> ConceptBank:
    """The PH2 criteria bank, counted without the images in `exclude` (when given and not empty)."""
    if not exclude:
        return skin.ph2_bank(labels)
    drop = set(exclude)
    return skin.ph2_bank(labels, ids=[i for i in skin.ph2_diagnoses(labels) if i not in drop])


# Banks counted from a dataset's per-image annotations: bank name -> (annotation file in the dataset's
# folder, reader of {image id: phrases}). These banks honour `exclude` (a run's test images).
IMAGE_ANNOTATIONS: dict[str, tuple[str, Callable[[Path], dict[str, list[str]]]]] = {
    "ph2": ("labels.csv", skin.ph2_concepts_per_image),
}


def _registry(root: str | os.PathLike | None = None) -> dict[str, Callable[..., ConceptBank]]:
    """name -> loader(exclude=None); `exclude` (image ids) matters only to banks that count images."""
    reg: dict[str, Callable[..., ConceptBank]] = {}
    for d in (*BIOMEDCOOP_DATASETS, "_other_classes"):
        reg[f"biomedcoop/{d}"] = lambda exclude=None, d=d: biomedcoop_bank(d, root)
    bdir = banks_dir(root)
    for p in sorted((bdir / "deal").glob("my_*.json")):
        reg[f"deal/{_stem(p)}"] = lambda exclude=None, s=_stem(p): deal_bank(s, root)
    for p in sorted((bdir / "dror" / "descriptors").glob("my_*.json")):
        reg[f"dror/{_stem(p)}"] = lambda exclude=None, s=_stem(p): dror_descriptor_bank(s, root)
    reg["dror/rationale_imagenet"] = lambda exclude=None: dror_rationale_bank(root)
    reg["medklip/observations"] = lambda exclude=None: medklip_bank(root)
    reg["cupl/imagenet"] = lambda exclude=None: cupl_bank(root)
    data = bdir.parent
    reg["ph2"] = lambda exclude=None: _ph2_bank(data / "ph2" / "labels.csv", exclude)
    # Derm7pt and SkinCon count their own images, which no loadable dataset names: nothing to exclude
    reg["derm7pt"] = lambda exclude=None: skin.derm7pt_bank(data / "concepts" / "derm7pt")
    reg["skincon"] = lambda exclude=None: skin.skincon_bank(data / "concepts" / "skincon")
    return reg


def list_shared_banks(root: str | os.PathLike | None = None) -> list[str]:
    """Names accepted by `load_shared_bank` (DEAL/DCP names follow the files present)."""
    return list(_registry(root))


def load_shared_bank(name: str, root: str | os.PathLike | None = None,
                     exclude: Collection[str] | None = None) -> ConceptBank:
    """Load a bank by its registry name, e.g. "biomedcoop/BUSI", "deal/cub", "ph2". `exclude`: image
    ids (a run's test images) that a bank counted from per-image annotations ("ph2") must not count;
    ids of other datasets exclude nothing, and banks that do not count images ignore it."""
    reg = _registry(root)
    if name not in reg:
        raise KnowledgeError(f"unknown bank name {name!r}; known: {', '.join(reg) or '(none: shared data missing)'}")
    return reg[name](exclude=exclude)


def image_annotations(bank: str, folder: str | os.PathLike) -> dict[str, list[str]] | None:
    """{image id: annotated phrases} of the dataset in `folder` for a bank counted from per-image
    annotations (`IMAGE_ANNOTATIONS`), or None when the bank counts no images or the file is absent."""
    if bank not in IMAGE_ANNOTATIONS:
        return None
    file, read = IMAGE_ANNOTATIONS[bank]
    path = Path(folder) / file
    return read(path) if path.is_file() else None
