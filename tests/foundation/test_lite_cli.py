"""The embedded `lite` backbone, its alignment, and the CLI's one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from conceptclip.backbones import create_backbone
from conceptclip.errors import BackboneError


def test_lite_interface(lite, pil_images):
    pixels = lite.preprocess(pil_images)
    assert pixels.shape == (4, 3, 224, 224)
    feats = lite.encode_image(pixels, patches=True)
    assert feats.patches.shape == (4, 49, lite.embed_dim) and feats.grid == (7, 7)
    # the head is linear: the global embedding is the mean of the patch embeddings (maps and scores agree)
    assert torch.allclose(feats.global_, feats.patches.mean(1), atol=1e-5)
    assert torch.allclose(feats.global_, lite.encode_image(pixels).global_, atol=1e-5)
    tokens = lite.tokenize(["a dermoscopy image of a melanoma.", "X X X X nevus."])
    stock = lite.encode_text(tokens)
    spliced = lite.encode_text(tokens, inputs_embeds=lite.token_embedding(tokens.input_ids))
    assert torch.equal(stock, spliced) and stock.shape == (2, lite.embed_dim)


def test_lite_text_tower_is_the_real_minilm(lite):
    """The sentence tower is pretrained: paraphrases are closer than unrelated sentences."""
    from conceptclip.backbones.lite import encode_sentences

    e = encode_sentences(["a dark mole on the skin", "a black nevus on the skin", "the stock market fell today"])
    assert e.shape == (3, 384) and torch.allclose(e.norm(dim=1), torch.ones(3), atol=1e-5)
    assert e[0] @ e[1] > e[0] @ e[2] + 0.2


def test_lite_frozen_in_train_mode(lite):
    lite.train()
    assert not lite.image_tower.training and all(not p.requires_grad for p in lite.parameters())


def test_align_trains_only_the_heads_and_fits_captions(lite, image_folder, tmp_path):
    from conceptclip.engine.align import AlignConfig, align
    from conceptclip.backbones.lite import LiteBackbone
    from conceptclip.data import FeatureCache, from_folder

    ds = from_folder(image_folder, template="a photo of a {}.")
    backbone = LiteBackbone().freeze()
    tower = {k: v.clone() for k, v in backbone.image_tower.state_dict().items()}
    summary = align(backbone, ds, [s.id for s in ds.samples], tmp_path / "heads.safetensors",
                    AlignConfig(epochs=60, augmented_views=0), cache=FeatureCache(tmp_path / "c"))
    assert summary["final_loss"] < summary["first_loss"] / 2
    assert summary["train_image_to_caption_top1"] == 1.0  # 3 classes with distinct mean colours
    assert all(torch.equal(v, backbone.image_tower.state_dict()[k]) for k, v in tower.items())
    reloaded = create_backbone(f"lite:{tmp_path / 'heads.safetensors'}")
    assert torch.equal(reloaded.image_head.weight, backbone.image_head.weight)
    assert not any(p.requires_grad for p in backbone.parameters())


def test_unknown_backbone_and_missing_heads():
    with pytest.raises(BackboneError, match="unknown backbone 'clipp'"):
        create_backbone("clipp")
    with pytest.raises(BackboneError, match="conceptclip align --out"):
        create_backbone("lite:/nonexistent/heads.safetensors")


def _cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    if args and args[0] == "train" and "--shots" not in args:
        args = (*args, "--shots", "2")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "conceptclip.cli", *args], capture_output=True, text=True,
                          timeout=300, env=env, cwd=cwd)


def test_cli_errors_are_one_line(tmp_path, image_folder):
    (image_folder / "bad.csv").write_text("image,label\ncat/0.png,cat\ncat/404.png,dog\n")
    cases = [
        (["train", "-m", "coop", "--backbone", "clipp", "--dataset", str(image_folder), "-o", str(tmp_path / "r1")],
         "unknown backbone 'clipp'"),
        (["train", "-m", "coop", "--backbone", "tiny-clip", "--dataset", str(image_folder / "bad.csv"), "-o",
          str(tmp_path / "r2")], "bad.csv:row 3: image file not found"),
        (["train", "-m", "koop", "--backbone", "tiny-clip", "--dataset", str(image_folder), "-o", str(tmp_path / "r3")],
         "unknown method 'koop'"),
    ]
    for args, needle in cases:
        r = _cli(*args)
        assert r.returncode == 2, r.stderr
        lines = [line for line in r.stderr.strip().splitlines() if line.strip()]
        assert len(lines) == 1 and needle in lines[0] and "Traceback" not in r.stderr, r.stderr


def test_cli_corrupt_image_is_one_line(tmp_path, image_folder):
    (image_folder / "cat" / "0.png").write_bytes(b"not a png at all")
    r = _cli("train", "-m", "zeroshot", "--backbone", "tiny-clip", "--dataset", str(image_folder), "--shots", "2",
             "-o", str(tmp_path / "run"))
    assert r.returncode == 2 and "0.png: cannot read image" in r.stderr and "Traceback" not in r.stderr


def test_cli_train_then_eval(tmp_path, image_folder):
    out = tmp_path / "run"
    r = _cli("train", "-m", "coop", "--backbone", "tiny-clip", "--dataset", str(image_folder), "--shots", "2",
             "--set", "n_ctx=2", "--train", "epochs=2", "-o", str(out))
    assert r.returncode == 0, r.stderr
    r = _cli("eval", str(out), "--dataset", str(image_folder), "--out", str(tmp_path / "m.json"))
    assert r.returncode == 0, r.stderr
    import json

    assert json.loads((tmp_path / "m.json").read_text())["n"] == 30
