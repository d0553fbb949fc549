"""`conceptclip report` on the folder `conceptclip demo` writes (PH2, lite; a shortened demo)."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
@pytest.mark.shared_data
def test_report_on_a_demo_folder(ph2, tmp_path):
    from typer.testing import CliRunner

    from conceptclip.cli import app
    from conceptclip.demo import run_demo

    out = tmp_path / "demo"
    summary = run_demo(out, shots=2, seeds=[1, 2], epochs=2, align_epochs=5, log=lambda s: None)
    page = tmp_path / "report.html"
    res = CliRunner().invoke(app, ["report", str(out), "-o", str(page), "--images", "2"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout.strip().splitlines()[-1])
    assert (doc["runs"], doc["groups"], doc["cards"]) == (6, 3, 6)
    html = page.read_text()
    for method, row in summary["methods"].items():  # the demo's own summary, as mean ± std in the page
        acc = row["accuracy"]
        assert f"{acc['mean']:.3f} ± {acc['std']:.3f}" in html, method
    assert "AUC melanoma" in html and "concept prompt of ph2 (sha256:" in html
    assert html.count("<figcaption>t-SNE of the learned context tokens") == 1  # CoOp only
