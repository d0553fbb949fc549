"""Slow: on rendered synthetic images with known part masks and the real `lite` towers (heads aligned on
generic part captions), DEAL raises disentanglability and part mIoU of its Grad-CAM concept maps over its
ablation without R_disen and R_local (benchmarks/deal_synthetic.py, one seed; its table is in docs/deal.md)."""

from __future__ import annotations

import importlib.util
import sys
import random
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "deal_synthetic.py"


def load_benchmark():
    spec = importlib.util.spec_from_file_location("deal_synthetic_benchmark", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_rendered_parts_have_their_masks():
    bench = load_benchmark()

    im = bench.render([("red", "circle"), ("blue", "square")], random.Random(0))
    assert im.masks.shape == (2, bench.SIZE, bench.SIZE)
    assert not (im.masks[0] & im.masks[1]).any()  # distinct grid cells
    pixels = np.asarray(im.image)
    red = pixels[im.masks[0]].mean(0)
    blue = pixels[im.masks[1]].mean(0)
    assert red[0] > 200 and red[2] < 60 and blue[2] > 200 and blue[0] < 60
    assert bench.concepts()["lamp"] == ["red circle", "blue square", "yellow triangle"]


@pytest.mark.slow
def test_deal_beats_its_ablation_on_rendered_parts(tmp_path):
    bench = load_benchmark()
    results = bench.run(tmp_path, seeds=[1], shots=16, epochs=50, n_pretrain=240, n_test=20, lambdas=1.0,
                        align_epochs=300)
    deal, ablation = results["DEAL"][0], results["ablation (no R)"][0]
    assert deal["disentanglability"] > ablation["disentanglability"]
    assert deal["part_miou"] > ablation["part_miou"]
    assert deal["accuracy"] > 0.8 and ablation["accuracy"] > 0.8
