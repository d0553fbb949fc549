"""The one interface every vision-language backbone implements.

A backbone turns images into a global embedding **and** patch tokens, and turns token ids **or
prompt embeddings** (what prompt learning needs) into a text embedding. Everything above this
layer (prompts, methods, explainers) only talks to this interface.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn
from PIL import Image


@dataclass
class TokenBatch:
    """Tokenised texts: ids (T, L), attention mask (T, L), and the index of the pooled token
    of each row (`eot_index`, (T,)), i.e. where a CLIP-style encoder reads the sentence."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    eot_index: torch.Tensor

    def to(self, device: torch.device | str) -> "TokenBatch":
        return TokenBatch(self.input_ids.to(device), self.attention_mask.to(device), self.eot_index.to(device))

    def __len__(self) -> int:
        return self.input_ids.shape[0]


@dataclass
class ImageFeatures:
    """Output of `Backbone.encode_image`.

    global_: (B, D) projected image embedding (not normalised).
    patches: (B, N, D) projected patch/region tokens in the same space, or None.
    grid: (h, w) with h * w == N, to reshape patch tokens into a map.
    """

    global_: torch.Tensor
    patches: torch.Tensor | None = None
    grid: tuple[int, int] | None = None

    def patch_map(self) -> torch.Tensor:
        """Patch tokens as (B, D, h, w)."""
        if self.patches is None or self.grid is None:
            raise ValueError("this backbone returned no patch tokens")
        b, n, d = self.patches.shape
        return self.patches.transpose(1, 2).reshape(b, d, *self.grid)


class Backbone(nn.Module, ABC):
    """A frozen (by default) image tower + text tower in one joint embedding space.

    Attributes every backbone sets:
        name: registry spec that re-creates it (e.g. "lite", "hf:openai/clip-vit-base-patch32").
        embed_dim: joint embedding size D.
        text_width: width of the token embeddings fed to the text encoder.
        image_size: square input resolution.
        context_length: max tokens per text.
        is_vit: whether the image tower is a ViT (deep visual prompts, Chefer relevance need it).
    """

    name: str
    embed_dim: int
    text_width: int
    image_size: int
    context_length: int
    is_vit: bool = False

    # -- images -----------------------------------------------------------------
    @abstractmethod
    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """PIL images -> normalised pixel tensor (B, 3, S, S) on CPU."""

    @abstractmethod
    def encode_image(self, pixels: torch.Tensor, *, patches: bool = False) -> ImageFeatures:
        """Pixels (B, 3, S, S) -> ImageFeatures; patch tokens only when asked (cheaper)."""

    # -- text -------------------------------------------------------------------
    @abstractmethod
    def tokenize(self, texts: Sequence[str]) -> TokenBatch:
        """Texts -> TokenBatch padded to the longest text, at most `context_length` tokens
        (longer texts are truncated with the end token kept)."""

    @property
    @abstractmethod
    def token_embedding(self) -> nn.Embedding:
        """The text tower's token-embedding table (vocab, text_width)."""

    @abstractmethod
    def encode_text(self, tokens: TokenBatch, inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens -> (T, D) projected text embedding (not normalised).

        `inputs_embeds` (T, L, text_width), when given, replaces the token embeddings (prompt
        learning splices learned context vectors into them); position embeddings, masks and
        pooling still come from `tokens`. With `inputs_embeds = token_embedding(input_ids)` the
        result equals the stock path exactly.
        """

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Convenience: tokenize + encode on the backbone's device."""
        tokens = self.tokenize(texts).to(self.device)
        return self.encode_text(tokens)

    # -- misc -------------------------------------------------------------------
    @property
    def logit_scale(self) -> torch.Tensor:
        """exp(learned temperature), CLIP's logit scale (a scalar tensor)."""
        return self._logit_scale_param().exp()

    @abstractmethod
    def _logit_scale_param(self) -> torch.Tensor: ...

    @abstractmethod
    def explain_layers(self) -> dict[str, nn.Module]:
        """Layers explainers hook: at least "image" (last conv block / last ViT block,
        whose output gives the patch tokens); ViTs also "image_attn" (list of attention modules)."""

    @abstractmethod
    def weights_id(self) -> str:
        """A short hash of everything that changes the image features (weights + preprocessing):
        the key of the frozen-feature cache."""

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def freeze(self) -> "Backbone":
        """Freeze every parameter and keep the towers in eval mode (frozen batch-norm statistics
        and no dropout) even when an enclosing method is put in train mode."""
        for p in self.parameters():
            p.requires_grad_(False)
        self._frozen = True
        self.eval()
        return self

    def train(self, mode: bool = True) -> "Backbone":
        return super().train(mode and not getattr(self, "_frozen", False))


def state_hash(module: nn.Module, extra: str = "") -> str:
    """sha256 of a module's state dict (names, shapes, bytes) and an extra string, first 16 hex."""
    import hashlib

    h = hashlib.sha256(extra.encode())
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(str(tuple(v.shape)).encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes() if v.dtype != torch.bfloat16 else v.float().numpy().tobytes())
    return h.hexdigest()[:16]


FACTORIES: dict[str, Callable[[str | None], "Backbone"]] = {}  # kind -> factory(arg); see `backbones.create_backbone`


def register_backbone(kind: str) -> Callable:
    """Register a backbone factory `fn(arg or None) -> Backbone` for specs "KIND" / "KIND:ARG"."""
    def deco(fn: Callable[[str | None], Backbone]) -> Callable[[str | None], Backbone]:
        FACTORIES[kind] = fn
        return fn

    return deco
