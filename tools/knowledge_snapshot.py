"""Snapshot of the knowledge every bank-reading method resolves, as JSON, to compare two versions.

    PYTHONPATH=src python tools/knowledge_snapshot.py OUT.json     # needs ../shared/data (PH2, banks)

For PH2's three classes (with and without a fixed split's tested ids excluded) and for every shared
bank (its own classes as a method sees them, and PH2's classes): DEAL's concept lists, BiomedCoOp's
ensembles, ECOR/DROR's rationale spaces and prompts, XCoOp's clinical knowledge, BiomedCoOp's
per-dataset values, and the methods' own defaults built with a run's context. Errors are recorded as
results. About 40 s on one CPU thread.
"""
import json, sys, hashlib, warnings
warnings.filterwarnings("ignore")
import torch
torch.set_num_threads(1)
from conceptclip.data import load_dataset, holdout_split
from conceptclip.knowledge.loaders import list_shared_banks, load_shared_bank
from conceptclip.prompts.concept_lists import resolve_concepts
from conceptclip.prompts.ensembles import resolve_ensembles
from conceptclip.prompts.rationales import load_bank_spec, build_rationale_space, dataset_rationales
from conceptclip.methods.xcoop import resolve_knowledge, XCoOpConfig, V1_OPTIONS
from conceptclip.methods.biomedcoop import dataset_values
from conceptclip.methods import create_method
from conceptclip.backbones import create_backbone

out = {}
def rec(key, fn):
    try:
        out[key] = fn()
    except Exception as e:  # errors are results too
        out[key] = f"ERROR {type(e).__name__}: {e}"

ds = load_dataset("ph2")
ids = holdout_split(ds, seed=0).tested_ids()
out["ph2_tested"] = len(ids)
PH2 = list(ds.classnames)

def deal(classes, bank, ex):
    cl = resolve_concepts(classes, bank=bank, bank_exclude=ex)
    return {"concepts": cl.concepts, "sources": cl.sources}
def bio(classes, bank):
    e = resolve_ensembles(classes, bank)
    return {"prompts": e.prompts, "sources": e.sources, "removed": e.removed}
def space(classes, bank, ex, field="phrase", sets="single", pairs="all", full=True):
    b = load_bank_spec(bank, ex)
    s = build_rationale_space(b, classes, sets=sets, pairs=pairs, field=field)
    d = {"bank": s.bank_name, "hash": s.bank_hash, "vocab": s.vocab, "sets": s.sets,
         "pair_mask": s.pair_mask.int().tolist() if full else hashlib.sha256(s.pair_mask.numpy().tobytes()).hexdigest(),
         "class_truth": s.class_truth.int().tolist() if full else hashlib.sha256(s.class_truth.numpy().tobytes()).hexdigest(),
         "rationale_prompts": s.rationale_prompts()}
    if full:
        d["pair_prompts"] = s.pair_prompts()[0]
    return d
def xk(classes, ex, **cfg):
    k = resolve_knowledge(XCoOpConfig(**cfg), classes, ex)
    return {"concepts": k.concepts, "frequency": k.frequency, "prompts": k.clinical_prompts, "source": k.source}

for ex_name, ex in (("exclude", ids), ("none", None)):
    rec(f"ph2/deal/{ex_name}", lambda: deal(PH2, "ph2", ex))
    rec(f"ph2/biomedcoop/{ex_name}", lambda: bio(PH2, "ph2"))
    for sets in ("single", "class"):
        for pairs in ("all", "bank"):
            rec(f"ph2/ecor/{ex_name}/{sets}/{pairs}", lambda: space(PH2, "ph2", ex, sets=sets, pairs=pairs))
    rec(f"ph2/xcoop/{ex_name}/default", lambda: xk(PH2, ex))
    rec(f"ph2/xcoop/{ex_name}/v1", lambda: xk(PH2, ex, **V1_OPTIONS))
    rec(f"ph2/xcoop/{ex_name}/top2", lambda: xk(PH2, ex, top_k=2, min_frequency=0.5))
rec("ph2/dataset_rationales", lambda: dataset_rationales(ds))
rec("ph2/biomedcoop_templates", lambda: bio(PH2, ""))
for name in ("ph2", "PH2", "busi", "COVID_19", "Lung_Colon", "shapes", None, "DermaMNIST", "kvasir"):
    rec(f"dataset_values/{name}", lambda: list(dataset_values(name)))

# method level (defaults chosen by the methods, with the run's context)
tiny = create_backbone("tiny-clip")
from conceptclip.backbones.lite import LiteBackbone
lite = LiteBackbone().freeze()
ctx = {"dataset": ds, "knowledge_exclude": ids}
def m_deal():
    m = create_method("deal", lite, PH2, {}, **ctx)
    return {"bank": m.config.bank, "concepts": m.concept_lists.concepts, "sources": m.concept_lists.sources}
def m_bio(bank):
    m = create_method("biomedcoop", tiny, PH2, {"bank": bank}, **ctx)
    return {"prompts": m.ensembles.prompts, "sources": m.ensembles.sources, "values": [m.lambda_sccm, m.lambda_kdsp, m.tau], "src": m.values_source}
def m_ecor(name):
    m = create_method(name, tiny, PH2, {"bank": "ph2"}, **ctx)
    return {"space": m.space.summary(), "vocab": m.space.vocab, "texts": m.rationale_texts,
            "truth_source": m.truth_source, "sample_truth": None if m.sample_truth is None else m.sample_truth.int().tolist()}
rec("method/deal/ph2", m_deal)
rec("method/biomedcoop/templates", lambda: m_bio(""))
rec("method/biomedcoop/ph2", lambda: m_bio("ph2"))
rec("method/biomedcoop/DermaMNIST", lambda: m_bio("biomedcoop/DermaMNIST"))
rec("method/ecor/ph2", lambda: m_ecor("ecor"))
rec("method/dror/ph2", lambda: m_ecor("dror"))
rec("method/xcoop/ph2", lambda: create_method("xcoop", lite, PH2, {}, **ctx).knowledge.clinical_prompts)

# every shared bank, its own classes as a method sees them (underscores read as spaces)
for name in list_shared_banks():
    b = load_shared_bank(name)
    classes = [c.replace("_", " ") for c in b.classes]
    big = len(classes) > 50
    rec(f"bank/{name}/deal", lambda: deal(classes, name, ids))
    rec(f"bank/{name}/biomedcoop", lambda: bio(classes, name))
    rec(f"bank/{name}/ecor", lambda: space(classes if not big else classes[:40], name, ids, full=not big))
    if name == "dror/rationale_imagenet":
        rec(f"bank/{name}/dror_field", lambda: space(classes[:40], name, ids, field="rationale", full=False))
    rec(f"bank/{name}/xcoop", lambda: xk(classes, ids, bank=name))
    rec(f"bank/{name}/xcoop_raw", lambda: xk(list(b.classes), ids, bank=name))
    rec(f"bank/{name}/ph2classes/deal", lambda: deal(PH2, name, ids))
    rec(f"bank/{name}/ph2classes/bio", lambda: bio(PH2, name))

json.dump(out, open(sys.argv[1], "w"), indent=0, sort_keys=True, default=str)
print(len(out), "entries")
