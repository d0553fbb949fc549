"""`open_clip:` backend: only its missing-dependency and spec errors can be tested here (open_clip
cannot be installed beside the pinned torch); the model code itself is marked untested."""

from __future__ import annotations

import sys

import pytest

from conceptclip.backbones import create_backbone
from conceptclip.errors import BackboneError

BIOMEDCLIP = "open_clip:hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"


@pytest.mark.parametrize("spec", [BIOMEDCLIP, "open_clip:ViT-B-16@laion2b_s34b_b88k"])
def test_missing_open_clip_says_how_to_install(monkeypatch, spec):
    monkeypatch.setitem(sys.modules, "open_clip", None)  # makes `import open_clip` raise ImportError
    with pytest.raises(BackboneError) as info:
        create_backbone(spec)
    msg = str(info.value)
    assert 'pip install -c constraints.txt "conceptclip[open_clip]"' in msg
    assert "could not be imported (ModuleNotFoundError" in msg and "torchvision" in msg


def test_broken_open_clip_import_is_reported_not_raised_raw(monkeypatch, tmp_path):
    # a torchvision that does not match torch fails inside `import open_clip` with a RuntimeError
    pkg = tmp_path / "open_clip"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("raise RuntimeError('operator torchvision::nms does not exist')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "open_clip", raising=False)
    with pytest.raises(BackboneError, match=r"RuntimeError: operator torchvision::nms does not exist.*pip install"):
        create_backbone(BIOMEDCLIP)


def test_open_clip_needs_a_model_name():
    with pytest.raises(BackboneError, match="needs a model"):
        create_backbone("open_clip")
