"""The worked examples of docs/own-data.md and docs/add-a-method.md, run as written: their code
blocks are read from the Markdown files and executed in a scratch folder."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import sys
from pathlib import Path

import pytest
import torch
from doc_blocks import blocks

@pytest.fixture
def shapes(tmp_path, monkeypatch):
    """own-data.md step 1, executed in a scratch folder: shapes/images/*.png and shapes/shapes.csv."""
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks("own-data.md", "python")[0], "own-data.md", "exec", dont_inherit=True), {"__name__": "make_shapes"})
    return tmp_path / "shapes"


def test_own_data_walkthrough(shapes):
    from conceptclip.data import from_json, load_dataset
    from conceptclip.knowledge.schema import load_bank

    ds = load_dataset("shapes/shapes.csv")
    assert (ds.name, ds.classnames, len(ds)) == ("shapes", ["circle", "square", "triangle"], 60)
    assert ds.by_id("images/circle_00").caption.endswith("circle on a light background")
    csv_head = [b for b in blocks("own-data.md", "") if b.startswith("image,label,caption")][0].splitlines()[:2]
    assert (shapes / "shapes.csv").read_text().splitlines()[:2] == csv_head
    manifest, bank = blocks("own-data.md", "json")[:2]
    (shapes / "manifest.json").write_text(manifest)
    one = from_json(shapes / "manifest.json")
    assert (one.name, one.template, len(one), one.samples[0].label) == ("shapes", "a drawing of a {}.", 1, 0)
    (shapes / "bank.json").write_text(bank)
    loaded = load_bank(shapes / "bank.json")
    assert loaded.class_names == ds.classnames
    assert loaded.phrases("square") == ["four right angles", "blue colour"]


def test_add_a_method_example_runs_and_explains(shapes):
    from conceptclip.engine.load import load_run
    from conceptclip.io import load_tensors
    from conceptclip.methods import _METHODS

    code = blocks("add-a-method.md", "python")
    assert len(code) == 2
    # block 1 is the method's module file: import it as a module, as the methods package would
    module_file = shapes.parent / "my_bottleneck.py"
    module_file.write_text(code[0])
    spec = importlib.util.spec_from_file_location("my_bottleneck", module_file)
    module = importlib.util.module_from_spec(spec)
    sys.modules["my_bottleneck"] = module
    namespace = {"__name__": "add_a_method_doc"}
    out = io.StringIO()
    try:
        spec.loader.exec_module(module)
        with contextlib.redirect_stdout(out):
            exec(compile(code[1], "add-a-method.md block 2", "exec", dont_inherit=True), namespace)
        printed = out.getvalue().splitlines()
        assert printed[0].startswith("test accuracy ")
        result = namespace["result"]
        assert printed[1] == f"{result.prediction} method"
        assert printed[2].startswith(f"Method rationale: {result.prediction} because of ")
        assert result.concepts and {n for n, _ in result.concepts} == set(namespace["concepts"])

        run = Path("runs/shapes/bottleneck_seed1")
        assert set(load_tensors(run / "model.safetensors")) == {"head.weight", "head.bias"}
        assert json.loads((run / "config.json").read_text())["method"]["config"]["concepts"] == namespace["concepts"]
        # z = W (tau s) + b with s_k = cos(f(x), t_k), computed by hand from the reloaded run
        method, _ = load_run(run)
        feats = torch.randn(2, method.backbone.embed_dim, generator=torch.Generator().manual_seed(0))
        s = torch.nn.functional.normalize(feats, dim=-1) @ method.concept_text.t()
        torch.testing.assert_close(method.logits({"features": feats}),
                                   method.config.scale * s @ method.head.weight.t() + method.head.bias)
        cos = torch.nn.functional.cosine_similarity(feats[:, None], method.concept_text[None], dim=-1)
        torch.testing.assert_close(method.concept_scores({"features": feats}), cos)
    finally:
        _METHODS.pop("my_bottleneck", None)  # the example registers a method for this test only
        sys.modules.pop("my_bottleneck", None)
