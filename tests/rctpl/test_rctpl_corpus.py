"""Reports -> RC-TPL training texts: knowledge injection, regions, polarity and labels."""

from __future__ import annotations

import json

import pytest
import torch

from conceptclip.errors import ConfigError, DataError
from conceptclip.knowledge.triplets import Triplet
from conceptclip.paths import shared_data_dir
from conceptclip.rctpl.corpus import (
    InjectionConfig,
    ReportItem,
    build_corpus,
    knowledge_sentence,
    label_matrix,
    read_reports,
    report_item,
    select_classes,
)

DESC = {"effusion": "Fluid in the pleural space. A second sentence.", "cardiomegaly": "The heart is enlarged."}


def test_knowledge_sentence_injects_description_and_location():
    pos = Triplet("effusion", "left_pleural", "positive")
    assert knowledge_sentence(pos, DESC) == ("There is effusion. Fluid in the pleural space. "
                                             "It is located in left pleural.")
    unc = Triplet("effusion", "pleural_unspec", "uncertain")
    assert knowledge_sentence(unc, DESC) == "There may be effusion. Fluid in the pleural space. It is located in pleural."
    assert knowledge_sentence(Triplet("effusion", "left_pleural", "negative"), DESC) == "There is no effusion."
    assert knowledge_sentence(Triplet("opacity", None, "positive"), DESC) == "There is opacity."  # no description, no location
    two = InjectionConfig(description_sentences=2, location_template="It is located at {location}.")
    assert knowledge_sentence(pos, DESC, two) == ("There is effusion. Fluid in the pleural space. A second sentence. "
                                                  "It is located at left pleural.")
    bare = InjectionConfig(description=False, location=False)
    assert knowledge_sentence(pos, DESC, bare) == "There is effusion."


def test_report_item_regions_and_polarity():
    item = report_item("r1", {"findings": "Small left pleural effusion. The heart is normal. 2. No pneumothorax.",
                              "impression": "Borderline cardiomegaly. XXXX XXXX."}, DESC)
    assert item.text == ("Small left pleural effusion. The heart is normal. 2. No pneumothorax. "
                         "Borderline cardiomegaly. XXXX XXXX.")
    assert item.regions == (
        "There is effusion. Fluid in the pleural space. It is located in left pleural.",
        "The heart is normal.",  # a sentence without a finding stays a region; "2." and "XXXX XXXX." do not
        "There is no pneumothorax.",
        "There may be cardiomegaly. The heart is enlarged. It is located in heart size.",
    )
    assert (item.positive, item.negative, item.uncertain) == ({"effusion"}, {"pneumothorax"}, {"cardiomegaly"})
    # a concept stated present anywhere is positive, even where another sentence negates it
    mixed = report_item("r2", {"findings": "No effusion on the right. Small left effusion."}, DESC)
    assert mixed.positive == {"effusion"} and not mixed.negative
    assert report_item("r3", {"findings": "", "impression": "  "}, DESC) is None


def test_label_matrix_uncertain_policies_and_no_finding():
    items = [ReportItem("a", "t", ("t",), frozenset({"effusion"}), frozenset({"edema"}), frozenset({"cardiomegaly"})),
             ReportItem("b", "t", ("t",), frozenset(), frozenset({"effusion"}), frozenset()),
             ReportItem("c", "t", ("t",), frozenset(), frozenset(), frozenset({"edema"}))]
    classes = ["effusion", "cardiomegaly", "edema", "No Finding"]
    y, m = label_matrix(items, classes)  # uncertain ignored
    assert y.tolist() == [[1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 0, 1]]
    assert m.tolist() == [[True, False, True, True], [True, True, True, True], [True, True, False, False]]
    y, m = label_matrix(items, classes, "positive")
    assert y.tolist() == [[1, 1, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]] and bool(m.all())
    y, m = label_matrix(items, classes, "negative")
    assert y.tolist() == [[1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 0, 1]] and bool(m.all())
    with pytest.raises(ConfigError, match="uncertain"):
        label_matrix(items, classes, "maybe")


def test_select_classes():
    items = [ReportItem(str(i), "t", ("t",), frozenset({"effusion"} | ({"edema"} if i < 2 else set()))) for i in range(4)]
    assert select_classes(items, min_reports=2) == ["effusion", "edema"]
    with pytest.raises(ConfigError, match="lower min_reports"):
        select_classes(items, min_reports=3)
    assert select_classes(items, classes=["edema", "normal"]) == ["edema", "normal"]
    with pytest.raises(ConfigError, match="not concepts found"):
        select_classes(items, classes=["pneumothorax"])


def test_read_reports_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_reports(tmp_path / "none.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "a", "findings": "ok"}) + "\n{not json\n")
    with pytest.raises(DataError, match="line 2"):
        read_reports(bad)
    bad.write_text(json.dumps({"id": "a", "findings": 3}) + "\n")
    with pytest.raises(DataError, match="'findings' must be a string"):
        read_reports(bad)


@pytest.mark.shared_data
def test_iu_xray_reports_become_labelled_items():
    path = shared_data_dir() / "iuxray" / "reports.jsonl"
    if not path.is_file():
        pytest.skip(f"IU X-Ray reports not found at {path}")
    items = build_corpus(path, limit=60)  # MedKLIP descriptions from ../shared/data/banks
    by_id = {it.id: it for it in items}
    assert all(it.regions for it in items) and len(items) >= 55
    assert not by_id["CXR1"].positive  # "no pulmonary edema ... normal chest"
    assert "edema" in by_id["CXR1"].negative
    cxr2 = by_id["CXR2"]  # "Borderline cardiomegaly. ... Enlarged pulmonary arteries."
    assert "cardiomegaly" in cxr2.uncertain and "enlarge" in cxr2.positive
    assert any(r.startswith("There may be cardiomegaly. Cardiomegaly (sometimes megacardia") for r in cxr2.regions)
    y, m = label_matrix(items, ["cardiomegaly", "enlarge"])
    row = [it.id for it in items].index("CXR2")
    assert y[row].tolist() == [0.0, 1.0] and m[row].tolist() == [False, True]
    assert torch.isfinite(y).all()
