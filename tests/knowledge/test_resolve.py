"""The one knowledge resolver: class-name matching, bank loading with test-id exclusion, the dataset
registry's default banks, and the per-image annotations of a registered dataset."""

from __future__ import annotations

import pytest

from conceptclip.data import DatasetEntry, dataset_entry, load_dataset, register_dataset
from conceptclip.data.registry import DATASETS
from conceptclip.errors import ConfigError, DataError
from conceptclip.knowledge.resolve import (
    check_class_map, dataset_image_annotations, default_bank, load_bank_any, match_classes, match_name, name_key,
    resolve_bank,
)
from conceptclip.knowledge.schema import Provenance, save_bank, simple_bank

PROV = Provenance(kind="paper", citation="test")


def _old_key(name: str) -> str:
    """The rule DEAL's, BiomedCoOp's and ECOR/DROR's matchers used before: lower case, "_" -> " ",
    whitespace collapsed."""
    return " ".join(name.replace("_", " ").lower().split())


def test_match_name_rule():
    bank = ["apple pie", "Black-footed Albatross", "covid19", "AnnualCrop", "melanoma"]
    assert match_name("melanoma", bank) == "melanoma"  # exact
    for name, hit in (("apple_pie", "apple pie"), ("Apple Pie", "apple pie"), ("apple-pie", "apple pie"),
                      ("black footed albatross", "Black-footed Albatross"), ("COVID_19", "covid19"),
                      ("annual crop", "AnnualCrop"), ("  Melanoma ", "melanoma")):
        assert match_name(name, bank) == hit, name
    assert match_name("nevus", bank) is None
    assert match_name("", bank) is None and match_name("--", bank) is None  # an empty key matches nothing
    assert name_key("Apple_Pie-2") == "applepie2"


def test_exact_beats_key_and_an_ambiguous_key_is_an_error():
    assert match_name("Melanoma", ["melanoma", "Melanoma"]) == "Melanoma"
    with pytest.raises(ConfigError, match=r"matches several of \['melanoma', 'Melanoma'\]"):
        match_name("MELANOMA", ["melanoma", "Melanoma"])


def test_every_match_of_the_old_matchers_is_kept():
    """Wherever the old rules (exact: XCoOp; `_old_key`: the others) found one bank class, the one
    matcher finds the same class."""
    bank = ["Melanoma", "common_nevus", "atypical  nevus", "Black-footed Albatross", "apple pie", "t-shirt"]
    names = ["melanoma", "MELANOMA", "common nevus", "Common_Nevus", "atypical nevus", "black-footed albatross",
             "Apple_Pie", "t-shirt", "T-Shirt", "nevus", "albatross"]
    for n in names:
        exact = n if n in bank else None
        old = [b for b in bank if _old_key(b) == _old_key(n)]
        new = match_name(n, bank)
        if exact is not None:
            assert new == exact, n
        if len(old) == 1:
            assert new == old[0], n


def test_match_classes_and_class_map():
    bank = ["mel", "Nevus", "keratosis"]
    assert match_classes(["melanoma", "nevus", "dog"], bank, {"melanoma": "mel"}) == ["mel", "Nevus", None]
    assert check_class_map({"a": "b"}, ["a", "c"]) == {"a": "b"}
    with pytest.raises(ConfigError, match=r"class_map names classes \['dog'\] that are not among \['a'\]"):
        check_class_map({"dog": "x"}, ["a"])


def test_resolve_bank_from_a_file(tmp_path):
    path = save_bank(simple_bank("toy", {"apple_pie": ["crust"], "Tiger Shark": ["fin"]}, PROV), tmp_path / "b.json")
    r = resolve_bank(str(path), ["apple pie", "tiger-shark", "cat"])
    assert r.bank.name == "toy" and r.targets == ["apple_pie", "Tiger Shark", None] and r.missing == ["cat"]
    assert r.target("apple pie") == "apple_pie"
    assert load_bank_any(str(path), exclude=["x"]).content_hash == r.bank.content_hash  # a file counts no images


def test_registry_and_default_banks():
    ph2 = dataset_entry("ph2")
    assert ph2 is not None and ph2.classes == ("common nevus", "atypical nevus", "melanoma")
    assert default_bank("concepts", dataset="ph2") == "ph2" and default_bank("annotations", dataset="ph2") == "ph2"
    assert default_bank("concepts", dataset="shapes") == "" and default_bank("concepts", dataset="") == ""
    # by classes: the same set of names (order, case and "_" ignored), never a part of it
    assert default_bank("concepts", classnames=["melanoma", "Common_Nevus", "atypical nevus"]) == "ph2"
    for classes in (["melanoma", "common nevus"], ["circle", "square"], ["melanoma", "nevus", "atypical nevus"]):
        assert default_bank("concepts", classnames=classes) == "", classes
    with pytest.raises(DataError, match="bank uses"):
        DatasetEntry("x", lambda: None, ("a",), {"prompts": "y"})


def test_a_registered_dataset_loads_by_name_and_brings_its_annotations(tmp_path):
    (tmp_path / "labels.csv").write_text(
        "id,diagnosis,asymmetry,pigment_network,dots_globules,streaks,regression_areas,blue_whitish_veil,colors\n"
        "a1,melanoma,fully_asymmetric,atypical,absent,present,absent,present,black;white;red\n", encoding="utf-8")
    from conceptclip.data.dataset import Dataset, Sample

    def load(**kw):
        return Dataset("derm-toy", ["melanoma"], [Sample("a1", tmp_path / "a1.jpg", label=0)], root=tmp_path)

    try:
        register_dataset(DatasetEntry("derm-toy", load, ("melanoma",), {"annotations": "ph2"}))
        ds = load_dataset("derm-toy")
        assert ds.name == "derm-toy" and [s.id for s in ds.samples] == ["a1"]
        assert dataset_image_annotations(ds) == {"a1": [
            "asymmetry", "atypical pigment network", "irregular streaks", "blue-whitish veil", "white colour",
            "red colour", "black colour", "multiple colours"]}
        (tmp_path / "labels.csv").unlink()
        assert dataset_image_annotations(ds) is None  # the annotation file is absent: no annotations
    finally:
        DATASETS.pop("derm-toy", None)
    with pytest.raises(DataError, match=r"dataset 'nowhere': expected 'ph2', a folder of class sub-folders"):
        load_dataset("nowhere")


@pytest.mark.shared_data
def test_the_ph2_bank_never_counts_the_excluded_images(ph2):
    from conceptclip.data import holdout_split
    from conceptclip.knowledge.skin import ph2_bank

    tested = set(holdout_split(ph2, seed=0).tested_ids())
    labels = ph2.root / "labels.csv"
    rest = [s.id for s in ph2.samples if s.id not in tested]
    excluded = load_bank_any("ph2", exclude=sorted(tested))
    assert excluded.content_hash == ph2_bank(labels, ids=rest).content_hash
    assert excluded.content_hash != load_bank_any("ph2").content_hash
    for cls, entry in excluded.classes.items():  # counts over the non-tested images of the class only
        n = sum(1 for s in ph2.samples if s.id not in tested and ph2.classnames[s.label] == cls)
        for c in entry.concepts:
            assert c.frequency == round(c.count / n, 6)
    assert load_bank_any("ph2", exclude=["not-a-ph2-id"]).classes == load_bank_any("ph2").classes


@pytest.mark.shared_data
def test_biomedcoop_reads_the_ph2_bank_without_the_tested_images(ph2, tiny_clip):
    """BiomedCoOp's bank now goes through the same loader (before: the full bank, test images counted)."""
    from conceptclip.data import holdout_split
    from conceptclip.methods import create_method
    from conceptclip.prompts.ensembles import bank_prompts

    tested = holdout_split(ph2, seed=0).tested_ids()
    method = create_method("biomedcoop", tiny_clip, ph2.classnames, {"bank": "ph2"}, knowledge_exclude=tested)
    expected = bank_prompts(load_bank_any("ph2", exclude=tested))
    assert method.ensembles.prompts == [expected[c] for c in ph2.classnames]


def test_xcoop_matches_bank_classes_like_every_method(tmp_path, tiny_clip):
    """A method sees "apple_pie" as "apple pie"; XCoOp's exact matcher refused the bank class "apple_pie"."""
    from conceptclip.methods import create_method

    path = save_bank(simple_bank("food", {"apple_pie": ["crust"], "baklava": ["layers"]}, PROV), tmp_path / "f.json")
    method = create_method("xcoop", tiny_clip, ["apple_pie", "Baklava"], {"bank": str(path)})
    assert method.knowledge.concepts == {"apple pie": ["crust"], "Baklava": ["layers"]}
    deal = create_method("deal", tiny_clip, ["apple_pie", "Baklava"], {"bank": str(path)})
    assert deal.concept_lists.concepts == [["crust"], ["layers"]]


def test_a_registered_concept_bank_is_the_default_of_deal_and_xcoop(tmp_path, tiny_clip):
    """DEAL takes the bank of the run's dataset (by name), XCoOp the bank registered for its classes."""
    from types import SimpleNamespace

    from conceptclip.methods import create_method

    path = save_bank(simple_bank("shapes", {"circle": ["round edge"], "square": ["four corners"]}, PROV),
                     tmp_path / "bank.json")
    try:
        register_dataset(DatasetEntry("shapes-toy", lambda **kw: None, ("circle", "square"), {"concepts": str(path)}))
        deal = create_method("deal", tiny_clip, ["circle", "square"], dataset=SimpleNamespace(name="shapes-toy"))
        assert deal.config.bank == str(path) and deal.concept_lists.concepts == [["round edge"], ["four corners"]]
        xcoop = create_method("xcoop", tiny_clip, ["Square", "circle"])
        assert xcoop.knowledge.concepts == {"Square": ["four corners"], "circle": ["round edge"]}
        with pytest.raises(ConfigError, match="deal needs concepts"):  # another dataset's name: no default
            create_method("deal", tiny_clip, ["circle", "square"], dataset=SimpleNamespace(name="shapes"))
    finally:
        DATASETS.pop("shapes-toy", None)
