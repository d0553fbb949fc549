"""`open_clip:`: OpenCLIP models (e.g. BiomedCLIP) behind `Backbone`, an optional extra.

Specs: `open_clip:MODEL_NAME[@PRETRAINED]` (e.g. `open_clip:ViT-B-16@laion2b_s34b_b88k`) or
`open_clip:hf-hub:ORG/NAME` (e.g. `open_clip:hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224`).

`open_clip` is imported lazily inside the factory; it pulls PyPI's torchvision, which must be the
build that matches the installed torch (`pip install -c constraints.txt "conceptclip[open_clip]"`).

UNTESTED: open_clip could not be installed beside the pinned torch where this was written, so
everything below the import check is written against open_clip's documented model layout
(`CLIP` with its own text transformer, `CustomTextCLIP` with `model.text` being open_clip's
`TextTransformer` or an `HFTextEncoder`; `model.visual` being open_clip's `VisionTransformer` or a
timm `TimmModel`) and has never run. Only the missing-dependency error is tested. Check
`encode_text(tokens, token_embedding(ids))` against `model.encode_text(ids)` before relying on it.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Sequence

import torch
from PIL import Image
from torch import nn

from conceptclip.backbones.base import Backbone, ImageFeatures, TokenBatch, register_backbone, state_hash
from conceptclip.errors import BackboneError

__all__ = ["OpenCLIPBackbone", "open_clip_factory"]

INSTALL_HINT = (
    'pip install -c constraints.txt "conceptclip[open_clip]" (open_clip needs a torchvision build that '
    "imports together with the installed torch)"
)


def _import_open_clip() -> Any:
    try:
        import open_clip
    except Exception as exc:  # ImportError, or a torch/torchvision mismatch failing at import
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise BackboneError(
            f"backbone 'open_clip' needs the optional open_clip package, which could not be imported "
            f"({type(exc).__name__}: {first}); install it with {INSTALL_HINT}"
        ) from None
    return open_clip


class OpenCLIPBackbone(Backbone):
    """An OpenCLIP model, its tokenizer and its (torchvision) eval transform. UNTESTED (see module)."""

    def __init__(self, model: nn.Module, tokenizer: Any, transform: Any, name: str) -> None:
        super().__init__()
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.transform = transform
        self.name = name
        self._hf_text = hasattr(model, "text") and hasattr(model.text, "transformer") and hasattr(
            model.text.transformer, "get_input_embeddings"
        )
        self.context_length = int(
            getattr(tokenizer, "context_length", None) or getattr(model, "context_length", None) or 77
        )
        self.text_width = int(self.token_embedding.embedding_dim)
        size = getattr(model.visual, "image_size", None)
        if size is None:
            size = (getattr(model.visual, "preprocess_cfg", None) or {}).get("size")
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size or 224)
        self.is_vit = self._vit_blocks() is not None
        with torch.no_grad():
            self.embed_dim = int(self.encode_text(self.tokenize(["a"])).shape[-1])

    # -- images -----------------------------------------------------------------
    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """open_clip's eval transform (resize, centre crop, RGB, normalise) per image, stacked."""
        images = [images] if isinstance(images, Image.Image) else list(images)
        if not images:
            raise BackboneError("preprocess got no images (expected a non-empty list of PIL images)")
        for i, im in enumerate(images):
            if not isinstance(im, Image.Image):
                raise BackboneError(f"preprocess: item {i} is a {type(im).__name__}, expected a PIL.Image.Image")
        return torch.stack([self.transform(im) for im in images])

    def encode_image(self, pixels: torch.Tensor, *, patches: bool = False) -> ImageFeatures:
        """Global = `model.encode_image`; patches (UNTESTED): ViT tokens after the final norm,
        through the same projection as the pooled token (timm `TimmModel`: `trunk.forward_features`
        then `head`; open_clip `VisionTransformer`: `output_tokens=True` then `@ proj`)."""
        s = self.image_size
        if pixels.dim() != 4 or tuple(pixels.shape[1:]) != (3, s, s):
            raise BackboneError(f"backbone {self.name!r} expects pixels (B, 3, {s}, {s}), got {tuple(pixels.shape)}")
        pixels = pixels.to(self.device)
        visual = self.model.visual
        if not patches:
            return ImageFeatures(global_=self.model.encode_image(pixels))
        if hasattr(visual, "trunk"):  # timm tower (BiomedCLIP)
            tokens = visual.trunk.forward_features(pixels)
            global_ = visual.head(visual.trunk.forward_head(tokens))
            n_prefix = int(getattr(visual.trunk, "num_prefix_tokens", 1))
            patch = visual.head(tokens[:, n_prefix:])
        elif hasattr(visual, "output_tokens"):
            old = visual.output_tokens
            visual.output_tokens = True
            try:
                global_, patch = visual(pixels)
            finally:
                visual.output_tokens = old
            if getattr(visual, "proj", None) is not None:
                patch = patch @ visual.proj
        else:
            raise BackboneError(f"backbone {self.name!r}: patch tokens are only supported for ViT image towers")
        n = patch.shape[1]
        side = int(round(n**0.5))
        if side * side != n:
            raise BackboneError(f"backbone {self.name!r}: {n} patch tokens do not form a square grid")
        return ImageFeatures(global_=global_, patches=patch, grid=(side, side))

    # -- text -------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> TokenBatch:
        """open_clip's tokenizer (fixed `context_length`); `eot_index` is where the model pools:
        position 0 for a BERT-style [CLS] pooler, else the end token (the largest id for
        open_clip's own BPE, i.e. its `argmax` pooling)."""
        if isinstance(texts, str):
            raise BackboneError("tokenize expects a list of strings, got a single str (wrap it in a list)")
        texts = list(texts)
        if not texts:
            raise BackboneError("tokenize got no texts (expected a non-empty list of strings)")
        ids = self.tokenizer(texts).long()
        if ids.shape[1] > self.context_length:
            ids = ids[:, : self.context_length]
        if self._hf_text:
            pad = self.model.text.config.pad_token_id
            mask = (ids != pad).long()
            pooler = type(getattr(self.model.text, "pooler", None)).__name__
            if pooler.startswith("Cls"):
                eot = torch.zeros(len(texts), dtype=torch.long)
            else:
                eot = mask.sum(1) - 1
        else:
            mask = (ids != 0).long()
            eot_id = getattr(self.tokenizer, "eot_token_id", None)
            if eot_id is not None and bool((ids == eot_id).any(1).all()):
                eot = (ids == eot_id).int().argmax(1).long()
            else:
                eot = ids.argmax(1)
        return TokenBatch(input_ids=ids, attention_mask=mask, eot_index=eot)

    def _text_tower(self) -> nn.Module:
        return self.model.text if hasattr(self.model, "text") else self.model

    @property
    def token_embedding(self) -> nn.Embedding:
        if self._hf_text:
            return self.model.text.transformer.get_input_embeddings()
        return self._text_tower().token_embedding

    def encode_text(self, tokens: TokenBatch, inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """UNTESTED. HF text (BiomedCLIP): `transformer(inputs_embeds=..., attention_mask)` ->
        pooler -> proj. open_clip text: embeddings + positional embedding -> transformer with the
        causal mask -> ln_final -> pool at `eot_index` -> text_projection."""
        device = self.device
        ids = tokens.input_ids.to(device)
        emb = self.token_embedding(ids) if inputs_embeds is None else inputs_embeds.to(device)
        if tuple(emb.shape) != (*ids.shape, self.text_width):
            raise BackboneError(f"inputs_embeds must be {(*ids.shape, self.text_width)}, got {tuple(emb.shape)}")
        if self._hf_text:
            text = self.model.text
            mask = tokens.attention_mask.to(device)
            out = text.transformer(inputs_embeds=emb, attention_mask=mask)
            return text.proj(text.pooler(out, mask))
        t = self._text_tower()
        length = ids.shape[1]
        x = emb + t.positional_embedding[:length].to(emb.dtype)
        attn_mask = getattr(t, "attn_mask", None)
        if attn_mask is not None:
            attn_mask = attn_mask[:length, :length]
        if getattr(t.transformer, "batch_first", False):
            x = t.transformer(x, attn_mask=attn_mask)
        else:  # older open_clip: sequence-first transformer
            x = t.transformer(x.permute(1, 0, 2), attn_mask=attn_mask).permute(1, 0, 2)
        x = t.ln_final(x)
        pooled = x[torch.arange(x.shape[0], device=device), tokens.eot_index.to(device)]
        proj = t.text_projection
        if proj is None:
            return pooled
        return proj(pooled) if isinstance(proj, nn.Module) else pooled @ proj

    # -- misc -------------------------------------------------------------------
    def _logit_scale_param(self) -> torch.Tensor:
        return self.model.logit_scale

    def _vit_blocks(self) -> Any:
        visual = self.model.visual
        if hasattr(visual, "trunk") and hasattr(visual.trunk, "blocks"):
            return visual.trunk.blocks
        if hasattr(visual, "transformer") and hasattr(visual.transformer, "resblocks"):
            return visual.transformer.resblocks
        return None

    def explain_layers(self) -> dict[str, Any]:
        """UNTESTED. "image": last ViT block (or the tower's last child); "image_attn": each block's
        attention module (timm `Attention`: set `fused_attn = False` and hook `attn_drop` for the
        probabilities; open_clip `nn.MultiheadAttention` returns them only with need_weights);
        "text": last text block."""
        blocks = self._vit_blocks()
        layers: dict[str, Any] = {}
        if blocks is not None:
            layers["image"] = blocks[-1]
            layers["image_attn"] = [getattr(b, "attn") for b in blocks]
        else:
            layers["image"] = list(self.model.visual.children())[-1]
        if self._hf_text:
            enc = self.model.text.transformer.encoder
            layers["text"] = enc.layer[-1]
        else:
            layers["text"] = self._text_tower().transformer.resblocks[-1]
        return layers

    def weights_id(self) -> str:
        return state_hash(self.model.visual, extra=repr(self.transform))


@register_backbone("open_clip")
def open_clip_factory(arg: str | None) -> OpenCLIPBackbone:
    """`open_clip:MODEL_NAME[@PRETRAINED]` or `open_clip:hf-hub:ORG/NAME`."""
    if not arg:
        raise BackboneError(
            "backbone 'open_clip' needs a model: 'open_clip:MODEL[@PRETRAINED]' or 'open_clip:hf-hub:ORG/NAME'"
        )
    open_clip = _import_open_clip()
    spec = f"open_clip:{arg}"
    if arg.startswith("hf-hub:"):
        name, pretrained = arg, None
    else:
        name, _, pretrained = arg.partition("@")
        pretrained = pretrained or None
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    try:
        if pretrained is None and not arg.startswith("hf-hub:"):
            warnings.warn(f"backbone {spec!r} names no pretrained weights (MODEL@PRETRAINED): random init",
                          stacklevel=2)
            model, _, transform = open_clip.create_model_and_transforms(name)
        elif pretrained is None:
            model, transform = open_clip.create_model_from_pretrained(name)
        else:
            model, _, transform = open_clip.create_model_and_transforms(name, pretrained=pretrained)
        tokenizer = open_clip.get_tokenizer(name)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        where = " (HF_HUB_OFFLINE=1: only cached weights can load)" if offline else ""
        raise BackboneError(
            f"backbone {spec!r} could not be loaded{where} [{type(exc).__name__}: {first}]; download it on a "
            "machine with internet (open_clip caches in ~/.cache/huggingface) or pass a local checkpoint as "
            "'open_clip:MODEL@/path/to/weights.bin'"
        ) from None
    return OpenCLIPBackbone(model, tokenizer, transform, name=spec)
