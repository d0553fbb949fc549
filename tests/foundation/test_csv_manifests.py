"""CSV manifests as users write them: Excel's byte-order mark, extra cells, label typos, class lists
(--classes, the `<stem>.classes.txt` sidecar), class indices, and multi-label end to end."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from conceptclip.data import fewshot_split, from_csv, holdout_split, load_dataset
from conceptclip.data.dataset import read_class_list, sidecar_classes
from conceptclip.errors import DataError


def _manifest(folder, text: str, name: str = "m.csv", encoding: str = "utf-8"):
    path = folder / name
    path.write_bytes(text.encode(encoding))
    return path


def _rows(labels: list[str]) -> str:
    """One row per label, each on its own image of the 30 in the pet folders (cat/0.png ... fish/9.png)."""
    return "".join(f"{('cat', 'dog', 'fish')[i // 10]}/{i % 10}.png,{lab}\n" for i, lab in enumerate(labels))


# ---------------------------------------------------------------- encoding and cells
def test_utf8_byte_order_mark_is_accepted(image_folder):
    # Excel's "CSV UTF-8" starts with EF BB BF; the header must still read `image`
    path = _manifest(image_folder, "\ufeffimage,label\n" + _rows(["cat", "dog"] * 2), encoding="utf-8")
    assert path.read_bytes()[:3] == b"\xef\xbb\xbf"
    ds = from_csv(path)
    assert ds.classnames == ["cat", "dog"] and len(ds) == 4


def test_extra_cells_are_refused_naming_the_row(image_folder):
    path = _manifest(image_folder, "image,label\ncat/0.png,cat\ncat/1.png,cat,a cat, sitting\ncat/2.png,dog\n")
    with pytest.raises(DataError) as err:
        from_csv(path, classnames=["cat", "dog"])
    msg = str(err.value)
    assert f"{path}:row 3" in msg and "'a cat'" in msg and "' sitting'" in msg and "\n" not in msg
    # empty trailing cells (a stray comma, Excel padding ragged rows) carry nothing and are accepted
    ok = _manifest(image_folder, "image,label\ncat/0.png,cat,,\ncat/1.png,dog,\n", "ok.csv")
    assert [s.label for s in from_csv(ok, classnames=["cat", "dog"]).samples] == [0, 1]


# ---------------------------------------------------------------- class lists and typos
def test_rare_label_is_refused_as_a_typo_naming_file_and_row(image_folder):
    labels = ["circle"] * 5 + ["square"] * 5
    labels.insert(6, "cirlce")  # row 8 (header is row 1)
    path = _manifest(image_folder, "image,label\n" + _rows(labels))
    with pytest.raises(DataError) as err:
        from_csv(path)
    msg = str(err.value)
    assert f"{path}:row 8" in msg and "'cirlce'" in msg and "did you mean 'circle'" in msg
    assert "m.classes.txt" in msg and "--classes" in msg and "\n" not in msg
    # an explicit class list vouches for every class it names: the rare one is then accepted ...
    ds = from_csv(path, classnames=["circle", "square", "cirlce"])
    assert ds.classnames == ["circle", "square", "cirlce"] and ds.samples[6].label == 2
    # ... and a label outside it is an error naming the row
    with pytest.raises(DataError, match=r"row 8: unknown label 'cirlce'"):
        from_csv(path, classnames=["circle", "square"])
    # the threshold is a documented parameter
    assert len(from_csv(path, min_label_rows=1).classnames) == 3


def test_labels_differing_only_in_case_are_refused(image_folder):
    path = _manifest(image_folder, "image,label\n" + _rows(["cat", "cat", "Cat", "Cat", "dog", "dog"]))
    with pytest.raises(DataError, match=r"row 4: label 'Cat' differs from 'cat' \(.*row 2\) only in case"):
        from_csv(path)


def test_class_indices_need_a_class_list_and_then_index_it(image_folder):
    # the documented index form: labels 0..C-1 index the class list
    text = "image,label\n" + _rows(["0", "2", "1", "2", "0", "1"])
    path = _manifest(image_folder, text)
    with pytest.raises(DataError) as err:
        from_csv(path)
    assert "row 2: label '0' is a class index" in str(err.value) and "m.classes.txt" in str(err.value)
    # --classes (a list) ...
    ds = load_dataset(path, classes="circle,square,triangle")
    assert ds.classnames == ["circle", "square", "triangle"]
    assert [s.label for s in ds.samples] == [0, 2, 1, 2, 0, 1]
    # ... or the sidecar file next to the manifest (one class per line, comments and blanks skipped)
    sidecar_classes(path).write_text("# shapes, in index order\ncircle\nsquare\n\ntriangle\n")
    ds = from_csv(path)
    assert ds.classnames == ["circle", "square", "triangle"] and [s.label for s in ds.samples] == [0, 2, 1, 2, 0, 1]
    # names and indices may mix once names exist; an index past the list is an error naming the row
    _manifest(image_folder, "image,label\n" + _rows(["circle", "1", "7"]))
    with pytest.raises(DataError, match=r"row 4: unknown label '7'"):
        from_csv(image_folder / "m.csv")


def test_class_list_sources(image_folder, tmp_path):
    listing = tmp_path / "classes.txt"
    listing.write_text("\ufeffdog\ncat\n")
    assert read_class_list(listing) == ["dog", "cat"]
    assert read_class_list("dog, cat") == ["dog", "cat"]
    for bad, needle in (("dog,,cat", "empty name"), ("dog,dog", "repeated")):
        with pytest.raises(DataError, match=needle):
            read_class_list(bad)
    path = _manifest(image_folder, "image,label\n" + _rows(["cat", "dog", "cat", "dog"]))
    assert load_dataset(path, classes=str(listing)).classnames == ["dog", "cat"]  # the list sets the order
    assert [s.label for s in load_dataset(path, classes=str(listing)).samples] == [1, 0, 1, 0]
    # folders name their classes themselves: a class list must agree with them
    assert load_dataset(image_folder, classes="cat,dog,fish").classnames == ["cat", "dog", "fish"]
    with pytest.raises(DataError, match="from its folders"):
        load_dataset(image_folder, classes="dog,cat,fish")


def test_json_manifest_class_list_must_agree(image_folder):
    doc = {"classnames": ["cat", "dog"], "samples": [{"image": "cat/0.png", "label": "cat"},
                                                     {"image": "dog/0.png", "label": 1}]}
    (image_folder / "m.json").write_text(json.dumps(doc))
    assert load_dataset(image_folder / "m.json", classes="cat,dog").classnames == ["cat", "dog"]
    with pytest.raises(DataError, match="differ from the given class list"):
        load_dataset(image_folder / "m.json", classes="dog,cat")


# ---------------------------------------------------------------- multi-label
def test_semicolon_in_a_single_label_manifest_is_refused(image_folder):
    path = _manifest(image_folder, "image,label\n" + _rows(["cat", "dog", "cat;dog", "cat", "dog"]))
    with pytest.raises(DataError) as err:
        from_csv(path)
    msg = str(err.value)
    assert f"{path}:row 4" in msg and "'cat;dog'" in msg and "'labels'" in msg


def test_labels_column_is_multilabel(image_folder):
    path = _manifest(image_folder, "image,labels\n" + _rows(["cat;dog", "dog", "cat", "fish;cat", "fish", "dog;fish"]))
    ds = from_csv(path)
    assert ds.multilabel and ds.classnames == ["cat", "dog", "fish"]
    assert [s.labels for s in ds.samples] == [(0, 1), (1,), (0,), (0, 2), (2,), (1, 2)]
    with pytest.raises(DataError, match=r"multi-label: train on the whole pool \(--shots 0"):
        fewshot_split(ds, holdout_split(ds), 2, seed=1)
    # indices work in multi-label manifests too, against a class list
    idx = _manifest(image_folder, "image,labels\n" + _rows(["0;1", "1", "2;0"]), "idx.csv")
    assert [s.labels for s in load_dataset(idx, classes="cat,dog,fish").samples] == [(0, 1), (1,), (0, 2)]


def _shapes_multilabel(root):
    """24 images 32x32 of one or two coloured blocks (red = circle, blue = square, green = triangle)."""
    from PIL import Image

    combos = [("circle",), ("square",), ("triangle",), ("circle", "square"), ("square", "triangle"),
              ("circle", "triangle")]
    colour = {"circle": (220, 30, 30), "square": (30, 30, 220), "triangle": (30, 180, 30)}
    (root / "images").mkdir(parents=True)
    rows = ["image,labels"]
    for i in range(24):
        labs = combos[i % len(combos)]
        arr = np.full((32, 32, 3), 235, dtype=np.uint8)
        for j, lab in enumerate(labs):
            arr[8:24, 2 + 15 * j: 15 + 15 * j] = colour[lab]
        Image.fromarray(arr).save(root / "images" / f"{i:02d}.png")
        rows.append(f"images/{i:02d}.png,{';'.join(labs)}")
    (root / "shapes.csv").write_text("\n".join(rows) + "\n")
    return root / "shapes.csv"


def test_multilabel_csv_trains_and_evaluates_end_to_end(tmp_path):
    """`labels` manifest -> `train` (CoOp, tiny-clip, sigmoid) -> `eval`: the multi-label metrics in
    metrics.json equal conceptclip.metrics on predictions.csv, whose labels read back as the truth."""
    from typer.testing import CliRunner

    from conceptclip.cli import app
    from conceptclip.metrics import accuracy, auc, f1_score
    from conceptclip.report.runs import read_predictions

    manifest = _shapes_multilabel(tmp_path / "shapes")
    run = tmp_path / "run"
    res = CliRunner().invoke(app, ["train", "-m", "coop", "--backbone", "tiny-clip", "--dataset", str(manifest),
                                   "-o", str(run), "--shots", "0", "--train", "epochs=2", "--set", "n_ctx=4"])
    assert res.exit_code == 0, res.output
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["multilabel"] is True and cfg["classnames"] == ["circle", "square", "triangle"]
    metrics = json.loads((run / "metrics.json").read_text())["test"]
    parts = read_predictions(run / "predictions.csv", cfg["classnames"], {}, True)
    test = parts["test"]
    truth = {s.id: s.labels for s in load_dataset(manifest).samples}
    for i, sid in enumerate(test.ids):
        assert tuple(np.flatnonzero(test.labels[i])) == truth[sid]
    probs, y = torch.as_tensor(test.probs), torch.as_tensor(test.labels)
    assert metrics["n"] == len(test.ids) == 24 - 12 - 5  # holdout: 12 train, 5 val (a 0.5 / 0.2 split of 24)
    assert metrics["accuracy"] == pytest.approx(accuracy(probs, y), abs=1e-5)  # subset accuracy
    assert metrics["auc_macro"] == pytest.approx(auc(probs, y), abs=1e-5)
    assert metrics["f1_macro"] == pytest.approx(f1_score(probs, y), abs=1e-5)
    with open(run / "predictions.csv", newline="") as fh:
        assert next(csv.reader(fh))[:3] == ["part", "id", "label"]
    # eval on the same manifest (its labels name the run's classes)
    out = tmp_path / "eval.json"
    res = CliRunner().invoke(app, ["eval", str(run), "--dataset", str(manifest), "--out", str(out)])
    assert res.exit_code == 0, res.output
    ev = json.loads(out.read_text())
    assert ev["n"] == 24 and set(ev["auc_per_class"]) == {"circle", "square", "triangle"}
    # the documented index form through the CLI: `--classes` names what the indices index
    names = ["circle", "square", "triangle"]
    text = manifest.read_text().splitlines()
    idx = manifest.with_name("idx.csv")
    idx.write_text("\n".join([text[0]] + [r.split(",")[0] + "," + ";".join(str(names.index(n)) for n in
                                                                           r.split(",")[1].split(";"))
                                         for r in text[1:]]) + "\n")
    res = CliRunner().invoke(app, ["eval", str(run), "--dataset", str(idx), "--classes", ",".join(names),
                                   "--out", str(tmp_path / "idx.json")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "idx.json").read_text()) == ev
    res = CliRunner().invoke(app, ["eval", str(run), "--dataset", str(idx), "--classes", "square,circle,triangle"])
    assert res.exit_code != 0 and "differ from the run's" in str(res.exception)
