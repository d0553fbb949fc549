"""CoCoOp's class prompts depend on the image: explanations skip the image–prompt similarity map
with a clear reason instead of crashing (`explain`, `report` and `serve` all ask for it)."""

from __future__ import annotations

import pytest
import torch

from conceptclip.errors import ConfigError

CLASSES = ["melanoma", "nevus", "keratosis"]


def test_cocoop_has_no_image_independent_text_features(tiny_clip):
    from conceptclip.explain.method import method_text_features
    from conceptclip.methods import create_method

    torch.manual_seed(0)
    cocoop = create_method("cocoop", tiny_clip, CLASSES, {"n_ctx": 4})
    with pytest.raises(ConfigError, match="conditions its class prompts on each image"):
        method_text_features(cocoop)
    coop = create_method("coop", tiny_clip, CLASSES, {"n_ctx": 4})
    assert method_text_features(coop).shape == (3, tiny_clip.embed_dim)
