"""`concepts` sub-app through typer's CliRunner."""

from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

from conceptclip.cli.concepts import concepts_app
from conceptclip.knowledge.schema import Provenance, load_bank, save_bank, simple_bank

runner = CliRunner()


@pytest.fixture
def bank_file(tmp_path):
    bank = simple_bank("toy", {"melanoma": ["blue-whitish veil", "Blue-whitish veil.", "irregular streaks"],
                               "nevus": ["typical pigment network"]},
                       Provenance(kind="annotation", citation="hand"), source_key="hand")
    return save_bank(bank, tmp_path / "toy.json")


def run(*args):
    result = runner.invoke(concepts_app, [str(a) for a in args])
    return result.exit_code, result.output


def test_show_and_export_formats(bank_file, tmp_path):
    code, out = run("show", bank_file)
    assert code == 0 and "toy" in out and "sha256:" in out and "blue-whitish veil" in out
    code, _ = run("export", bank_file, "--out", tmp_path / "copy.json")
    assert code == 0 and (tmp_path / "copy.json").read_bytes() == bank_file.read_bytes()
    run("export", bank_file, "--out", tmp_path / "p.json", "--format", "prompts", "--template", "deal", "--top-k", "1")
    assert json.loads((tmp_path / "p.json").read_text()) == {"melanoma": "An image of melanoma with blue-whitish veil.",
                                                              "nevus": "An image of nevus with typical pigment network."}
    run("export", bank_file, "--out", tmp_path / "b.csv", "--format", "csv")
    rows = list(csv.DictReader(open(tmp_path / "b.csv")))
    assert len(rows) == 4 and rows[0]["class"] == "melanoma" and rows[0]["source"] == "hand"
    run("export", bank_file, "--out", tmp_path / "l.json", "--format", "lists")
    assert json.loads((tmp_path / "l.json").read_text())["nevus"] == ["typical pigment network"]


def test_prune_writes_bank_and_report(bank_file, tmp_path):
    code, out = run("prune", bank_file, "--out-dir", tmp_path / "out", "--no-near", "--no-outliers")
    assert code == 0, out
    assert load_bank(tmp_path / "out" / "toy.json").phrases("melanoma") == ["blue-whitish veil", "irregular streaks"]
    report = json.loads((tmp_path / "out" / "toy.prune.json").read_text())
    assert report["removed"]["exact_duplicate"] == 1 and report["removals"][0]["index"] == 1


def test_merge(bank_file, tmp_path):
    code, out = run("merge", bank_file, bank_file, "--out", tmp_path / "m.json", "--name", "m")
    assert code == 0 and "2 classes, 4 entries" in out


def test_errors_are_one_line_exit_2(tmp_path):
    code, out = run("show", tmp_path / "missing.json")
    assert code == 2 and out.startswith("error: ") and "not found" in out and "Traceback" not in out
    (tmp_path / "bad.json").write_text("[1, 2]")
    code, out = run("show", tmp_path / "bad.json")
    assert code == 2 and "$: expected an object" in out


def test_elicit_through_fake_server(fake_llm, tmp_path):
    fake_llm.default = lambda body: ("ok", '```json\n{"concepts": ["blue-whitish veil", "irregular streaks"]}\n```')
    args = ["elicit", "-c", "melanoma", "-c", "nevus", "--base-url", fake_llm.base_url, "--model", "fake-1",
            "--cache-dir", tmp_path / "cache", "--out", tmp_path / "e.json", "--modality", "dermoscopy"]
    code, out = run(*args)
    assert code == 0, out
    assert "cache hits 0, misses 2, HTTP requests 2" in out
    code, out = run(*args)
    assert "cache hits 2, misses 0, HTTP requests 0" in out and len(fake_llm.requests) == 2
    bank = load_bank(tmp_path / "e.json")
    assert bank.phrases("nevus") == ["blue-whitish veil", "irregular streaks"] and bank.sources["llm"].model == "fake-1"


def test_triplets_command(tmp_path):
    reports = tmp_path / "r.jsonl"
    reports.write_text('{"id": "R1", "findings": "Small left pleural effusion. No pneumothorax.", "impression": ""}\n'
                       '{"id": "R2", "findings": "", "impression": "Normal chest."}\n')
    code, out = run("triplets", reports, "--out", tmp_path / "t.jsonl")
    assert code == 0 and "2 reports, 2 triplets, 1 reports with >= 1 triplet" in out
    first = json.loads((tmp_path / "t.jsonl").read_text().splitlines()[0])
    assert first["triplets"][0] == {"concept": "effusion", "location": "left_pleural", "polarity": "positive",
                                    "section": "findings", "evidence": "effusion"}


@pytest.mark.shared_data
def test_list_and_show_shared(shared, monkeypatch):
    monkeypatch.setenv("CONCEPTCLIP_DATA", str(shared))
    code, out = run("list")
    assert code == 0 and "biomedcoop/BUSI" in out and "ph2" in out.split()
    code, out = run("show", "ph2")
    assert code == 0 and "melanoma" in out and "atypical pigment network" in out


def test_exported_xcoop_prompts_are_the_ones_xcoop_trains_with(bank_file, tmp_path, tiny_clip):
    """`concepts export --format prompts --template xcoop` builds the clinical prompts the way XCoOp does
    (its paper's form by default; the modality form only when asked)."""
    from conceptclip.methods import create_method

    code, out = run("export", bank_file, "--out", tmp_path / "x.json", "--format", "prompts", "--template", "xcoop",
                    "--top-k", "1")  # tiny-clip reads 32 tokens
    assert code == 0, out
    exported = json.loads((tmp_path / "x.json").read_text())
    method = create_method("xcoop", tiny_clip, ["melanoma", "nevus"], {"bank": str(bank_file), "top_k": 1})
    assert exported == method.knowledge.clinical_prompts
    assert exported["nevus"] == "a photo of nevus, with typical pigment network."
    run("export", bank_file, "--out", tmp_path / "m.json", "--format", "prompts", "--template", "xcoop",
        "--modality", "dermoscopy", "--top-k", "1")
    v1 = create_method("xcoop", tiny_clip, ["melanoma", "nevus"],
                       {"bank": str(bank_file), "clinical_template": "modality", "modality": "dermoscopy", "top_k": 1})
    assert json.loads((tmp_path / "m.json").read_text()) == v1.knowledge.clinical_prompts
