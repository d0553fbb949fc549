"""PH2 / Derm7pt / SkinCon concept banks from expert annotations."""

from __future__ import annotations

import csv

import pytest

from conceptclip.errors import KnowledgeError
from conceptclip.knowledge.skin import (
    derm7pt_bank, ph2_bank, ph2_concepts_per_image, skincon_bank, skincon_concepts_per_image,
)

HEADER = "id,diagnosis,histological_diagnosis,asymmetry,pigment_network,dots_globules,streaks,regression_areas," \
         "blue_whitish_veil,colors\n"


def _write(tmp_path, rows: list[str]):
    path = tmp_path / "labels.csv"
    path.write_text(HEADER + "".join(r + "\n" for r in rows))
    return path


def test_per_image_phrases_and_frequencies_on_a_worked_example(tmp_path):
    path = _write(tmp_path, [
        "A,melanoma,,fully_asymmetric,atypical,atypical,present,present,present,black;blue_gray;dark_brown",
        "B,melanoma,,symmetric_one_axis,atypical,absent,absent,absent,present,dark_brown",
        "C,common_nevus,,fully_symmetric,typical,typical,absent,absent,absent,light_brown",
    ])
    per = ph2_concepts_per_image(path)
    assert per["A"] == ["asymmetry", "atypical pigment network", "atypical dots and globules", "irregular streaks",
                        "regression areas", "blue-whitish veil", "dark-brown colour", "blue-grey colour",
                        "black colour", "multiple colours"]
    assert per["B"] == ["asymmetry in one axis", "atypical pigment network", "blue-whitish veil", "dark-brown colour"]
    bank = ph2_bank(path, min_frequency=0.5)
    mel = {c.phrase: (c.frequency, c.count) for c in bank.classes["melanoma"].concepts}
    assert mel["atypical pigment network"] == (1.0, 2) and mel["irregular streaks"] == (0.5, 1)
    assert bank.phrases("melanoma")[:3] == ["atypical pigment network", "blue-whitish veil", "dark-brown colour"]
    assert bank.phrases("atypical nevus") == []
    assert bank.sources["ph2"].kind == "annotation"
    only_b = ph2_bank(path, min_frequency=0.5, ids=["B", "C"])  # e.g. a train pool: image A never counts
    mel = {c.phrase: (c.frequency, c.count) for c in only_b.classes["melanoma"].concepts}
    assert "irregular streaks" not in mel and mel["asymmetry in one axis"] == (1.0, 1)
    with pytest.raises(KnowledgeError, match=r"ids not in PH2: \['Z'\]"):
        ph2_bank(path, ids=["B", "Z"])


def test_bad_value_names_line_and_column(tmp_path):
    path = _write(tmp_path, ["A,melanoma,,fully_asymmetric,atypical,weird,absent,absent,absent,black"])
    with pytest.raises(KnowledgeError, match=r"labels.csv: line 2, column dots_globules: expected one of .* got 'weird'"):
        ph2_concepts_per_image(path)
    with pytest.raises(KnowledgeError, match="min_frequency"):
        ph2_bank(_write(tmp_path, []), min_frequency=2)


@pytest.mark.shared_data
def test_ph2_bank_on_real_labels(shared):
    labels = shared / "ph2" / "labels.csv"
    per = ph2_concepts_per_image(labels)
    assert len(per) == 200
    assert per["IMD003"] == ["symmetric shape", "typical pigment network", "dark-brown colour"]
    bank = ph2_bank(labels)
    rows = list(csv.DictReader(open(labels)))
    mel = [r for r in rows if r["diagnosis"] == "melanoma"]
    veil = sum(r["blue_whitish_veil"] == "present" for r in mel)
    got = {c.phrase: c for c in bank.classes["melanoma"].concepts}
    assert got["blue-whitish veil"].count == veil == 30 and got["blue-whitish veil"].frequency == 0.75
    for phrase in ("atypical pigment network", "blue-whitish veil", "irregular streaks", "multiple colours", "asymmetry"):
        assert phrase in got
    assert "irregular streaks" not in bank.phrases("common nevus")
    assert bank.phrases("common nevus")[0] == "typical pigment network"


@pytest.mark.shared_data
def test_ph2_phrases_agree_with_the_cbvlm_binary_criteria(shared):
    """The CBVLM file codes the same PH2 criteria as binary columns; both sources must agree."""
    per = ph2_concepts_per_image(shared / "ph2" / "labels.csv")
    column = {"TPN": "typical pigment network", "APN": "atypical pigment network", "ISTR": "irregular streaks",
              "IDG": "atypical dots and globules", "BWV": "blue-whitish veil", "RS": "regression areas"}
    rows = [r for r in csv.DictReader(open(shared / "concepts" / "ph2" / "dermoscopic_concepts_PH2_Derm7pt.csv"))
            if r["image_id"].startswith("IMD")]
    assert len(rows) == 200
    for r in rows:
        for col, phrase in column.items():
            assert (r[col] == "1") == (phrase in per[r["image_id"]]), (r["image_id"], col)


@pytest.mark.shared_data
def test_derm7pt_and_skincon_banks(shared):
    d7 = derm7pt_bank(shared / "concepts" / "derm7pt")
    assert list(d7.classes) == ["nevus", "melanoma"]
    mel = {c.phrase: c for c in d7.classes["melanoma"].concepts}
    # 252 melanomas: atypical network 138, irregular streaks 152, blue-whitish veil 120 (counted from the CSVs)
    assert (mel["atypical pigment network"].count, mel["irregular streaks"].count, mel["blue-whitish veil"].count) \
        == (138, 152, 120)
    assert d7.classes["melanoma"].description == "252 annotated images"
    per = skincon_concepts_per_image(shared / "concepts" / "skincon")
    assert len(per) == 3690 - 460  # images flagged "Do not consider this image" are left out
    sk = skincon_bank(shared / "concepts" / "skincon")
    assert list(sk.classes) == ["benign", "malignant"]
    assert sk.phrases("malignant")[:2] == ["erythema", "plaque"]
    assert "brown (hyperpigmentation)" in sk.phrases("malignant")
