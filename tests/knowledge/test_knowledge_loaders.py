"""Every real bank in shared/data/banks (and the skin banks) loads, matches its README counts
and round-trips byte-identically through save/load."""

from __future__ import annotations

import json

import pytest

from conceptclip.errors import KnowledgeError
from conceptclip.knowledge.loaders import (
    BIOMEDCOOP_DATASETS, biomedcoop_bank, cupl_bank, deal_bank, dror_descriptor_bank, dror_rationale_bank,
    list_shared_banks, load_shared_bank, medklip_bank,
)
from conceptclip.knowledge.schema import load_bank, save_bank

pytestmark = pytest.mark.shared_data


def test_every_shared_bank_round_trips_byte_identically(shared, tmp_path):
    names = list_shared_banks(shared / "banks")
    assert len(names) == 32  # 12 BiomedCoOp + 5 DEAL + 10 DROR/DCP + MedKLIP + CuPL + PH2 + Derm7pt + SkinCon
    for name in names:
        bank = load_shared_bank(name, shared / "banks")
        first = save_bank(bank, tmp_path / "a.json").read_bytes()
        loaded = load_bank(tmp_path / "a.json")
        assert loaded == bank, name
        assert save_bank(loaded, tmp_path / "b.json").read_bytes() == first, name
        assert loaded.n_concepts > 0 and loaded.sources, name


def test_biomedcoop_counts_order_and_provenance(shared):
    root = shared / "banks"
    classnames = json.loads((root / "biomedcoop" / "classnames.json").read_text())
    total = 0
    for ds in BIOMEDCOOP_DATASETS:
        bank = biomedcoop_bank(ds, root)
        assert bank.class_names == classnames[ds]  # label order
        raw = json.loads((root / "biomedcoop" / "prompts" / f"{ds}.json").read_text())
        assert bank.as_dict_of_lists() == raw  # every prompt, duplicates included, in order
        assert all(len(e.concepts) == 50 for e in bank.classes.values())
        total += bank.n_concepts
    assert total == 2800
    other = biomedcoop_bank("_other_classes", root)
    assert len(other.classes) == 16 and other.n_concepts == 797 and len(other.classes["tumor"].concepts) == 47
    src = other.sources["biomedcoop"]
    assert src.kind == "llm" and src.license == "MIT" and "7ceb5a89" in src.citation
    assert other.kind == "prompts"


@pytest.mark.parametrize("name, classes, total", [
    ("imagenet", 1000, 6000), ("cub", 200, 1200), ("food101", 101, 606), ("oxfordpet", 37, 222), ("eurosat", 10, 60)])
def test_deal_counts(shared, name, classes, total):
    bank = deal_bank(name, shared / "banks")
    assert (len(bank.classes), bank.n_concepts) == (classes, total)
    assert {len(e.concepts) for e in bank.classes.values()} == {6}


def test_dcp_descriptors_and_dror_rationales(shared):
    root = shared / "banks"
    counts = {"cifar10": (10, 79), "cifar100": (100, 726), "caltech101": (101, 606), "sun397": (397, 2388),
              "stanfordcars": (196, 1176)}
    for name, (classes, total) in counts.items():
        bank = dror_descriptor_bank(name, root)
        assert (len(bank.classes), bank.n_concepts) == (classes, total)
    # DCP's imagenet list is byte-identical to DEAL's (README): same content hash apart from provenance
    assert dror_descriptor_bank("imagenet", root).as_dict_of_lists() == deal_bank("imagenet", root).as_dict_of_lists()
    rat = dror_rationale_bank(root)
    assert len(rat.classes) == 1000
    tench = rat.classes["tench"].concepts
    assert [c.phrase for c in tench] == ["body", "fins", "eyes", "scales", "mouth"]
    assert tench[0].rationale == "body is olive green"
    # every one of the 9,850 graph edges is kept: a part (root edge) or a verbalised fact
    facts = sum(len(c.rationale.split("; ")) for e in rat.classes.values() for c in e.concepts if c.rationale)
    assert rat.n_concepts + facts == 9850
    kuvasz = rat.classes["Kuvasz"].concepts  # its root edge to "Color" spells the key "taget"
    assert [(c.phrase, c.rationale) for c in kuvasz][-1] == ("color", "color is white")


def test_medklip_observations_descriptions_locations(shared):
    bank = medklip_bank(shared / "banks")
    assert len(bank.classes) == 75 and len(bank.locations) == 51
    assert bank.locations[:3] == ("trachea", "left_hilar", "right_hilar")
    pneu = bank.classes["pneumonia"].concepts[0]
    assert pneu.description.startswith("Pneumonia is an inflammatory condition")  # from the "eumonia" key
    assert bank.sources["medklip"].kind == "paper"


def test_cupl_counts(shared):
    bank = cupl_bank(shared / "banks")
    assert (len(bank.classes), bank.n_concepts) == (998, 29940)
    assert bank.sources["cupl"].model == "text-davinci-002"


def test_unknown_and_missing(shared, tmp_path):
    with pytest.raises(KnowledgeError, match="unknown bank name 'nope'"):
        load_shared_bank("nope", shared / "banks")
    with pytest.raises(KnowledgeError, match="bank source file not found"):
        deal_bank("imagenet", tmp_path)
