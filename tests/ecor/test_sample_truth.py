"""Per-image rationale truth through the engine: batches carry "sample" (the row in dataset.samples),
a rationale method given `dataset=` looks each image's annotated rationales up by it, and falls back
to the class's rationales without "sample", without annotations, or with rationale_truth="class"."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from conceptclip.data import FeatureCache
from conceptclip.data.dataset import Dataset, Sample
from conceptclip.engine.data import build_parts
from conceptclip.errors import ConfigError
from conceptclip.knowledge.schema import Provenance, simple_bank
from conceptclip.methods import create_method
from conceptclip.prompts.rationales import dataset_rationales

CLASSES = ["melanoma", "nevus"]
# vocabulary r0 "blue veil", r1 "irregular dots", r2 "regular network";
# class truth: melanoma {r0, r1}, nevus {r1, r2}; pairs (class, set): (0, r0) (0, r1) (1, r1) (1, r2)
BANK_A = simple_bank("a", {"melanoma": ["blue veil", "irregular dots"], "nevus": ["irregular dots", "regular network"]},
                     Provenance(kind="paper", citation="hand-made test bank"))
# (id, label, annotated rationales or None): each annotated image differs from its class's list
ROWS = [("a", 0, ["irregular dots"]), ("b", 1, ["irregular dots"]), ("c", 1, None), ("d", 0, ["Blue veil."])]
# rows of the truth every image should get (c: unannotated, so its class's {r1, r2})
EXPECTED = {"a": [0, 1, 0], "b": [0, 1, 0], "c": [0, 1, 1], "d": [1, 0, 0]}
CLASS_LEVEL = {0: [1, 1, 0], 1: [0, 1, 1]}


@pytest.fixture
def toy(tmp_path) -> Dataset:
    """Four 8 x 8 images; all but "c" annotated through attrs["rationales"]."""
    rng = np.random.default_rng(0)
    samples = []
    for sid, label, rationales in ROWS:
        path = tmp_path / f"{sid}.png"
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(path)
        samples.append(Sample(sid, path, label=label, attrs={} if rationales is None else {"rationales": rationales}))
    return Dataset("toy", CLASSES, samples)


def _hand_logits(method, rationale_logits, pair_logits):
    method.similarities = lambda f: {"rationale_logits": rationale_logits.expand(f.shape[0], -1),
                                     "pair_logits": pair_logits.expand(f.shape[0], -1)}
    return method


def test_dataset_rationales_reads_attrs_and_leaves_unannotated_images_none(toy):
    assert dataset_rationales(toy) == [["irregular dots"], ["irregular dots"], None, ["Blue veil."]]
    assert dataset_rationales(Dataset("plain", CLASSES, [Sample("x", toy.samples[0].path, label=0)])) is None


def test_engine_batches_carry_sample_rows_and_the_method_takes_each_images_truth(toy, tiny_clip, tmp_path):
    m = create_method("ecor", tiny_clip, CLASSES, {"visual_prompt": "none"}, bank=BANK_A, dataset=toy)
    assert m.sample_truth.tolist() == [[False, True, False], [False, True, False], [False, False, False],
                                       [True, False, False]]
    assert m.sample_annotated.tolist() == [True, True, False, True]
    assert m.describe()["rationale_truth_source"].startswith("image: dataset 'toy'")
    assert "sample_truth" not in m.state_dict()  # rebuilt from the dataset, never saved
    ids = ["d", "b", "c", "a"]  # part order differs from dataset order
    part = build_parts(toy, {"train": ids}, m.inputs, tiny_clip, FeatureCache(tmp_path / "cache"))["train"]
    seen = {}
    for batch in part.batches(3, shuffle=True, generator=torch.Generator().manual_seed(0)):
        assert batch["sample"].dtype == torch.long
        for row, (i, s) in enumerate(zip(batch["index"].tolist(), batch["sample"].tolist())):
            assert toy.samples[s].id == ids[i]
            seen[ids[i]] = m.rationale_targets(batch)[row].int().tolist()
    assert seen == EXPECTED
    # without "sample" (or with an explicit "rationales" key) the old paths hold
    whole = part.all()
    no_sample = {k: v for k, v in whole.items() if k != "sample"}
    assert m.rationale_targets(no_sample).int().tolist() == [CLASS_LEVEL[y] for y in whole["labels"].tolist()]
    given = torch.tensor([[0.0, 0.0, 1.0]]).expand(4, -1)
    assert m.rationale_targets({**whole, "rationales": given}).int().tolist() == [[0, 0, 1]] * 4


def test_loss_through_an_engine_batch_uses_the_images_truth(toy, tiny_clip, tmp_path):
    """Image "b" (nevus) is annotated with "irregular dots" only. Former reading (bank pairs, softmax
    within R): L = log 3 + log 4/3 = log 4; its class's list {r1, r2} gives
    -(log 2/6 + log 3/6)/2 - log(3/4)/2."""
    former = {"pairs": "bank", "conditional_softmax": "grouped"}
    m = create_method("ecor", tiny_clip, CLASSES, {"visual_prompt": "none", "top_k": 1, **former}, bank=BANK_A,
                      dataset=toy)
    _hand_logits(m, torch.log(torch.tensor([[1.0, 2.0, 3.0]])), torch.tensor([[5.0, 0.0, math.log(3.0), -2.0]]))
    batch = build_parts(toy, {"train": ["b"]}, m.inputs, tiny_clip, FeatureCache(tmp_path / "cache"))["train"].all()
    assert batch["sample"].tolist() == [1]
    image_level = math.log(4.0)
    class_level = -(math.log(2 / 6) + math.log(3 / 6)) / 2 - math.log(0.75) / 2
    assert float(m.loss(batch)["loss"]) == pytest.approx(image_level)
    assert float(m.loss({k: v for k, v in batch.items() if k != "sample"})["loss"]) == pytest.approx(class_level)
    ab6 = create_method("ecor", tiny_clip, CLASSES,
                        {"visual_prompt": "none", "top_k": 1, "ablation": "class_truth", **former},
                        bank=BANK_A, dataset=toy)
    assert ab6.sample_truth is None and ab6.describe()["rationale_truth_source"].startswith("class")
    _hand_logits(ab6, torch.log(torch.tensor([[1.0, 2.0, 3.0]])), torch.tensor([[5.0, 0.0, math.log(3.0), -2.0]]))
    assert float(ab6.loss(batch)["loss"]) == pytest.approx(class_level)
    # DROR shares the truth: one softmax over the pairs (1/6, 1/12, 1/4, 1/2); image truth r1 -> pair (1, r1)
    d = create_method("dror", tiny_clip, CLASSES, {"visual_prompt": "none", "pairs": "bank"}, bank=BANK_A, dataset=toy)
    _hand_logits(d, torch.zeros(1, 3), torch.log(torch.tensor([[2.0, 1.0, 3.0, 6.0]])))
    assert float(d.loss(batch)["loss"]) == pytest.approx(-math.log(3 / 12))
    assert float(d.loss({k: v for k, v in batch.items() if k != "sample"})["loss"]) == pytest.approx(
        -(math.log(3 / 12) + math.log(6 / 12)) / 2)


def test_pixel_parts_carry_sample_rows(toy, tiny_clip, tmp_path):
    m = create_method("ecor", tiny_clip, CLASSES, {"visual_prompt": "shallow", "n_prompt_tokens": 2},
                      bank=BANK_A, dataset=toy)
    assert m.inputs == frozenset({"pixels"})
    ids = ["c", "a", "d"]
    part = build_parts(toy, {"train": ids}, m.inputs, tiny_clip, FeatureCache(tmp_path / "cache"))["train"]
    batches = list(part.batches(2, shuffle=True, generator=torch.Generator().manual_seed(3)))
    got = {ids[i]: toy.samples[s].id for b in batches for i, s in zip(b["index"].tolist(), b["sample"].tolist())}
    assert got == {i: i for i in ids}
    targets = m.rationale_targets(batches[0])
    assert targets.int().tolist() == [EXPECTED[ids[i]] for i in batches[0]["index"].tolist()]


def test_fallbacks_and_errors(toy, tiny_clip):
    plain = Dataset("plain", CLASSES, [Sample(s.id, s.path, label=s.label) for s in toy.samples])
    m = create_method("ecor", tiny_clip, CLASSES, {"visual_prompt": "none"}, bank=BANK_A, dataset=plain)
    assert m.sample_truth is None and m.describe()["rationale_truth_source"].endswith("annotations was given)")
    note = m.describe()["rationale_grid_note"]
    assert note.startswith("unless batches carry per-image 'rationales': ") and "no per-image rationale information" in note
    assert "rationale_grid_note" not in create_method("ecor", tiny_clip, CLASSES, {"visual_prompt": "none"},
                                                      bank=BANK_A, dataset=toy).describe()
    batch = {"labels": torch.tensor([0, 1]), "sample": torch.tensor([0, 1])}
    assert m.rationale_targets(batch).int().tolist() == [CLASS_LEVEL[0], CLASS_LEVEL[1]]
    without = create_method("ecor", tiny_clip, CLASSES, {"visual_prompt": "none"}, bank=BANK_A)  # no dataset=
    assert without.sample_truth is None
    annotated = create_method("ecor", tiny_clip, CLASSES, {"visual_prompt": "none"}, bank=BANK_A, dataset=toy)
    assert annotated.learned_state() == {}  # the truth tables are rebuilt from the dataset, not checkpointed
    with pytest.raises(ConfigError, match="batch 'sample'.*4 images"):
        annotated.rationale_targets({"labels": torch.tensor([0]), "sample": torch.tensor([4])})


def test_ph2_truth_matches_the_benchmarks(ph2, tiny_clip):
    """For PH2 the table is the benchmark's per-image truth: space.truth(ph2_concepts_per_image)."""
    from conceptclip.knowledge.skin import ph2_concepts_per_image

    m = create_method("ecor", tiny_clip, ph2.classnames, {"bank": "ph2", "visual_prompt": "none"}, dataset=ph2)
    per = ph2_concepts_per_image(ph2.root / "labels.csv")
    expected = m.space.truth([per[s.id] for s in ph2.samples]).bool()
    assert m.sample_annotated.all() and torch.equal(m.sample_truth, expected)
    # per-image truth differs from the class lists for most images
    assert int((expected != m.class_truth[torch.tensor([s.label for s in ph2.samples])]).any(1).sum()) > 100


def test_sample_rows_out_of_range_name_both_ends(toy, tiny_clip):
    m = create_method("ecor", tiny_clip, CLASSES, {"visual_prompt": "none"}, bank=BANK_A, dataset=toy)
    assert m.truth_source.startswith("image: dataset 'toy' annotations by batch 'sample' (3 of 4 images annotated")
    with pytest.raises(ConfigError, match=r"4 images, got values in \[-1, 2\]"):
        m.rationale_targets({"labels": torch.tensor([0, 1]), "sample": torch.tensor([-1, 2])})
    with pytest.raises(ConfigError, match=r"4 images, got values in \[0, 4\]"):
        m.rationale_targets({"labels": torch.tensor([0, 1]), "sample": torch.tensor([0, 4])})
    assert m.rationale_targets({"labels": torch.tensor([0, 1]), "sample": torch.tensor([0, 3])}).shape == (2, 3)
