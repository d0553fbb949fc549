"""`hf:` and `tiny-clip`: CLIP-style backbones over Hugging Face `transformers` 5.x `CLIPModel`.

- `hf:NAME` loads a hub checkpoint (e.g. `hf:openai/clip-vit-base-patch16`), `hf:/path/to/dir` a
  local folder holding `config.json`, the weights, the tokenizer files and (optionally)
  `preprocessor_config.json`. Nothing is downloaded when `HF_HUB_OFFLINE=1`; a missing model fails
  at once with a message saying how to get it.
- `tiny-clip` / `tiny-clip:SEED` builds a tiny random CLIP (ViT 32 px, patch 8, width 32, 2 layers)
  with an in-memory word-piece tokenizer: no files at all, for tests and demos.

Text prompts: `encode_text(tokens, inputs_embeds)` re-runs the text tower's own modules
(embeddings, causal + padding mask, encoder, final layer norm, pooling at `tokens.eot_index`,
projection) because transformers 5's `CLIPTextModel.forward` accepts no `inputs_embeds`; with
`inputs_embeds = token_embedding(input_ids)` it equals `CLIPModel.get_text_features` exactly.

Attention maps (Chefer relevance, rollout): the model runs with `attn_implementation="eager"`, so
each `CLIPAttention` module (`explain_layers()["image_attn"]`) returns `(output, probs)` with probs
(B, heads, N, N); either hook those modules or call `encode_image_with_attentions`.

Visual prompts (VPT): `vision_embeddings` gives the layer-0 token sequence [CLS, patches] and
`vision_forward_tokens` runs the encoder with learned prompt tokens inserted after CLS
([CLS, prompts, patches]), replacing them at every layer for which a prompt is given.
"""

from __future__ import annotations

import json
import os
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from conceptclip.backbones.base import Backbone, ImageFeatures, TokenBatch, register_backbone, state_hash
from conceptclip.errors import BackboneError

__all__ = ["HFCLIPBackbone", "tiny_clip", "tiny_tokenizer", "TINY_WORDS"]

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _no_cache_kwarg() -> dict[str, None]:
    """`create_causal_mask`'s "no KV cache" argument: `cache=None` where transformers has it (5.x
    renamed `past_key_values`, which warns and is removed in 5.40), else the old name."""
    import inspect

    from transformers.masking_utils import create_causal_mask

    params = inspect.signature(create_causal_mask).parameters
    return {"cache": None} if "cache" in params else {"past_key_values": None}

# ---------------------------------------------------------------------------------------------
# the backbone
# ---------------------------------------------------------------------------------------------


class HFCLIPBackbone(Backbone):
    """A `transformers.CLIPModel` with its tokenizer and image processor behind `Backbone`.

    Args:
        model: a CLIPModel built with `attn_implementation="eager"` (attention maps are needed).
        tokenizer: a transformers tokenizer whose sequences end with an end-of-text token.
        image_processor: a `CLIPImageProcessorPil` (resize shortest side, centre crop, normalise).
        name: the registry spec that re-creates this backbone.
    """

    is_vit = True

    def __init__(self, model: nn.Module, tokenizer: Any, image_processor: Any, name: str) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.name = name
        vcfg, tcfg = model.config.vision_config, model.config.text_config
        self.embed_dim = int(model.config.projection_dim)
        self.text_width = int(tcfg.hidden_size)
        self.image_size = int(vcfg.image_size)
        self.patch_size = int(vcfg.patch_size)
        self.context_length = int(tcfg.max_position_embeddings)
        crop = _crop_size(image_processor)
        if crop != self.image_size:
            raise BackboneError(
                f"backbone {name!r}: image processor crops to {crop} px but the vision tower expects "
                f"{self.image_size} px (preprocessor_config.json crop_size)"
            )
        if tokenizer.eos_token_id is None:
            raise BackboneError(f"backbone {name!r}: the tokenizer has no end-of-text token (eos_token)")

    # -- images -----------------------------------------------------------------
    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """PIL images of any size/mode -> (B, 3, S, S): RGB (alpha composited on white, 16-bit
        scaled to 8-bit), resize shortest side (bicubic), centre crop, scale to [0, 1], normalise."""
        if isinstance(images, Image.Image):
            images = [images]
        images = list(images)
        if not images:
            raise BackboneError("preprocess got no images (expected a non-empty list of PIL images)")
        for i, im in enumerate(images):
            if not isinstance(im, Image.Image):
                raise BackboneError(f"preprocess: item {i} is a {type(im).__name__}, expected a PIL.Image.Image")
        rgb = [_to_8bit(im) for im in images]
        return self.image_processor(images=rgb, return_tensors="pt")["pixel_values"].float()

    def vision_embeddings(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels (B, 3, S, S) -> the input of encoder layer 0, [CLS, patches] (B, 1 + N, W):
        patch + class embeddings, position embeddings and CLIP's pre-encoder layer norm."""
        vm = self.model.vision_model
        pixels = self._check_pixels(pixels)
        return vm.pre_layrnorm(vm.embeddings(pixels))

    def vision_forward_tokens(
        self,
        tokens: torch.Tensor,
        prompts_per_layer: Sequence[torch.Tensor] | None = None,
        *,
        patches: bool = False,
    ) -> ImageFeatures:
        """Run the vision encoder on `tokens` (B, 1 + N, W) from `vision_embeddings`, with
        optional visual prompts (VPT), and project like `encode_image`.

        prompts_per_layer[i] ((P, W) or (B, P, W)) is the prompt block at the input of layer i:
        at layer 0 it is inserted after CLS ([CLS, prompts, patches]); at later layers it replaces
        the P prompt tokens coming out of the previous layer (VPT-deep). Layers past the end of
        the list carry the prompt tokens on, so a one-element list is shallow VPT. Prompt tokens
        are dropped from the returned patch tokens.
        """
        vm = self.model.vision_model
        layers = vm.encoder.layers
        if tokens.dim() != 3 or tokens.shape[-1] != vm.config.hidden_size:
            raise BackboneError(
                f"vision tokens must be (B, 1+N, {vm.config.hidden_size}), got {tuple(tokens.shape)}"
            )
        prompts = list(prompts_per_layer or [])
        if len(prompts) > len(layers):
            raise BackboneError(f"got prompts for {len(prompts)} layers but the vision tower has {len(layers)}")
        b = tokens.shape[0]
        n_prompt = 0
        hidden = tokens
        for i, layer in enumerate(layers):
            if i < len(prompts):
                p = _expand_prompt(prompts[i], b, vm.config.hidden_size, i).to(hidden.dtype)
                if i == 0:
                    n_prompt = p.shape[1]
                    hidden = torch.cat([hidden[:, :1], p, hidden[:, 1:]], dim=1)
                else:
                    if p.shape[1] != n_prompt:
                        raise BackboneError(
                            f"prompt for layer {i} has {p.shape[1]} tokens, layer 0 had {n_prompt}"
                        )
                    hidden = torch.cat([hidden[:, :1], p, hidden[:, 1 + n_prompt :]], dim=1)
            hidden = layer(hidden, None)
        global_ = self.model.visual_projection(vm.post_layernorm(hidden[:, 0]))
        if not patches:
            return ImageFeatures(global_=global_)
        patch_tokens = hidden[:, 1 + n_prompt :]
        side = self.image_size // self.patch_size
        if patch_tokens.shape[1] != side * side:
            raise BackboneError(f"expected {side * side} patch tokens, got {patch_tokens.shape[1]}")
        proj = self.model.visual_projection(vm.post_layernorm(patch_tokens))
        return ImageFeatures(global_=global_, patches=proj, grid=(side, side))

    def encode_image(self, pixels: torch.Tensor, *, patches: bool = False) -> ImageFeatures:
        """Global = CLIP's image features (post-layernorm CLS + visual projection); patches =
        the last layer's patch tokens through the same post-layernorm + projection (the usual
        CLIP dense trick), on a (S/p, S/p) grid."""
        return self.vision_forward_tokens(self.vision_embeddings(pixels), None, patches=patches)

    def encode_image_with_attentions(
        self, pixels: torch.Tensor, *, patches: bool = False, retain_grad: bool = False
    ) -> tuple[ImageFeatures, list[torch.Tensor]]:
        """`encode_image` plus every layer's attention probabilities (B, heads, 1+N, 1+N).

        With `retain_grad=True` the maps keep `.grad` after a backward pass of any score computed
        from the returned features (what Chefer relevance needs); a frozen tower is handled by
        tracking gradients from a detached copy of the pixels.
        """
        maps: list[torch.Tensor] = []

        def hook(_mod: nn.Module, _args: Any, out: Any) -> None:
            probs = out[1] if isinstance(out, tuple) and len(out) > 1 else None
            if probs is None:
                raise BackboneError("attention maps need the model loaded with attn_implementation='eager'")
            if retain_grad:
                probs.retain_grad()
            maps.append(probs)

        handles = [layer.self_attn.register_forward_hook(hook) for layer in self.model.vision_model.encoder.layers]
        try:
            with torch.enable_grad() if retain_grad else nullcontext():
                if retain_grad and not pixels.requires_grad:
                    pixels = pixels.detach().requires_grad_(True)
                feats = self.encode_image(pixels, patches=patches)
        finally:
            for h in handles:
                h.remove()
        return feats, maps

    def image_attentions(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        """Attention probabilities of every vision layer, (B, heads, 1+N, 1+N) each (no grads)."""
        with torch.no_grad():
            return self.encode_image_with_attentions(pixels)[1]

    # -- text -------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> TokenBatch:
        """Texts -> ids padded to the longest text (at most `context_length`; longer texts are
        truncated and keep their end token); `eot_index` is the end token's position."""
        if isinstance(texts, str):
            raise BackboneError("tokenize expects a list of strings, got a single str (wrap it in a list)")
        texts = list(texts)
        if not texts:
            raise BackboneError("tokenize got no texts (expected a non-empty list of strings)")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise BackboneError(f"tokenize: item {i} is a {type(t).__name__}, expected str")
        enc = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.context_length, return_tensors="pt"
        )
        ids = enc["input_ids"].long()
        mask = enc["attention_mask"].long()
        is_eot = (ids == self.tokenizer.eos_token_id) & mask.bool()
        if not bool(is_eot.any(1).all()):
            bad = int((~is_eot.any(1)).nonzero()[0, 0])
            raise BackboneError(f"tokenizer of {self.name!r} produced no end token for text {bad}: {texts[bad]!r}")
        eot = is_eot.int().argmax(1)  # first end token (pad may equal eos)
        return TokenBatch(input_ids=ids, attention_mask=mask, eot_index=eot.long())

    @property
    def token_embedding(self) -> nn.Embedding:
        return self.model.text_model.embeddings.token_embedding

    def encode_text(self, tokens: TokenBatch, inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """CLIP's text path, module by module, so `inputs_embeds` can replace the token embeddings:
        embeddings (+ positions) -> causal & padding mask -> encoder -> final layer norm ->
        pool at `eot_index` -> text projection."""
        from transformers.masking_utils import create_causal_mask

        tm = self.model.text_model
        device = self.device
        ids = tokens.input_ids.to(device)
        t, length = ids.shape
        if length > self.context_length:
            raise BackboneError(f"token ids have length {length}, more than context_length {self.context_length}")
        if inputs_embeds is not None:
            if tuple(inputs_embeds.shape) != (t, length, self.text_width):
                raise BackboneError(
                    f"inputs_embeds must be (T, L, text_width) = {(t, length, self.text_width)}, "
                    f"got {tuple(inputs_embeds.shape)}"
                )
            inputs_embeds = inputs_embeds.to(device=device, dtype=self.token_embedding.weight.dtype)
        hidden = tm.embeddings(input_ids=ids, inputs_embeds=inputs_embeds)
        mask = create_causal_mask(config=tm.config, inputs_embeds=hidden,
                                  attention_mask=tokens.attention_mask.to(device), **_no_cache_kwarg())
        hidden = tm.encoder(inputs_embeds=hidden, attention_mask=mask, is_causal=True).last_hidden_state
        hidden = tm.final_layer_norm(hidden)
        pooled = hidden[torch.arange(t, device=device), tokens.eot_index.to(device)]
        return self.model.text_projection(pooled)

    # -- misc -------------------------------------------------------------------
    def _logit_scale_param(self) -> torch.Tensor:
        return self.model.logit_scale

    def explain_layers(self) -> dict[str, Any]:
        """"image": last vision encoder layer (output (B, 1+N, W) tokens [CLS, patches]);
        "image_attn": every vision layer's `CLIPAttention` (its output[1] is the probability map);
        "text": last text encoder layer."""
        vlayers = self.model.vision_model.encoder.layers
        return {
            "image": vlayers[-1],
            "image_attn": [layer.self_attn for layer in vlayers],
            "text": self.model.text_model.encoder.layers[-1],
        }

    def weights_id(self) -> str:
        """Hash of the vision tower, the visual projection and the preprocessing config."""
        tower = nn.ModuleList([self.model.vision_model, self.model.visual_projection])
        return state_hash(tower, extra=_processor_signature(self.image_processor))

    def _check_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        s = self.image_size
        if not isinstance(pixels, torch.Tensor) or pixels.dim() != 4 or tuple(pixels.shape[1:]) != (3, s, s):
            shape = tuple(pixels.shape) if isinstance(pixels, torch.Tensor) else type(pixels).__name__
            raise BackboneError(f"backbone {self.name!r} expects pixels (B, 3, {s}, {s}), got {shape}")
        return pixels.to(device=self.device, dtype=self.model.visual_projection.weight.dtype)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _expand_prompt(p: torch.Tensor, batch: int, width: int, layer: int) -> torch.Tensor:
    if p.dim() == 2:
        p = p.unsqueeze(0).expand(batch, -1, -1)
    if p.dim() != 3 or p.shape[0] != batch or p.shape[2] != width or p.shape[1] == 0:
        raise BackboneError(
            f"prompt for layer {layer} must be (P, {width}) or ({batch}, P, {width}), got {tuple(p.shape)}"
        )
    return p


def _to_8bit(im: Image.Image) -> Image.Image:
    """High-bit-depth images (16-bit, 32-bit int, float; common in medical imaging) -> 8-bit 'L'
    before the processor's RGB conversion, which would otherwise clip them: 16-bit by the full
    0..65535 range, 32-bit/float by their own min..max. Other modes pass unchanged."""
    if im.mode.startswith("I;16"):
        arr = np.asarray(im, dtype=np.float64) / 257.0
    elif im.mode in ("I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
    else:
        return im
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")


def _crop_size(proc: Any) -> int:
    crop = getattr(proc, "crop_size", None)
    if isinstance(crop, dict):
        return int(crop.get("height", crop.get("shortest_edge", 0)))
    size = getattr(proc, "size", None) or {}
    return int(size.get("height", size.get("shortest_edge", 0)))


def _processor_signature(proc: Any) -> str:
    cfg = proc.to_dict()
    keys = ("do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale", "rescale_factor",
            "do_normalize", "image_mean", "image_std", "do_convert_rgb")
    return json.dumps({k: cfg.get(k) for k in keys}, sort_keys=True, default=str)


def _image_processor(image_size: int, **overrides: Any) -> Any:
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    kw: dict[str, Any] = dict(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_mean=list(OPENAI_CLIP_MEAN),
        image_std=list(OPENAI_CLIP_STD),
    )
    kw.update(overrides)
    return CLIPImageProcessorPil(**kw)


# ---------------------------------------------------------------------------------------------
# hf:NAME_OR_DIR
# ---------------------------------------------------------------------------------------------


def _offline() -> bool:
    """HF_HUB_OFFLINE read now (huggingface_hub reads it once at import)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # pragma: no cover
        return False


def _looks_local(arg: str) -> bool:
    return arg.startswith(("/", ".", "~")) or "\\" in arg or arg.count("/") > 1 or Path(arg).expanduser().exists()


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


@register_backbone("hf")
def hf_clip(arg: str | None) -> HFCLIPBackbone:
    """`hf:NAME` (hub) or `hf:/path/to/folder`: a transformers CLIP checkpoint."""
    if not arg:
        raise BackboneError(
            "backbone 'hf' needs a model: 'hf:NAME' (e.g. hf:openai/clip-vit-base-patch16) or 'hf:/path/to/folder'"
        )
    spec = f"hf:{arg}"
    how = (
        "download it on a machine with internet (`hf download {name} --local-dir DIR`) "
        "and pass the folder as 'hf:DIR'"
    )
    if _looks_local(arg):
        path = Path(arg).expanduser()
        if not (path / "config.json").is_file():
            what = "has no config.json" if path.is_dir() else "not found"
            raise BackboneError(
                f"backbone {spec!r}: folder {path} {what} (expected a CLIP checkpoint folder with config.json, "
                f"weights and tokenizer files); " + how.format(name="NAME")
            )
        source, local_only = str(path), True
    else:
        source, local_only = arg, _offline()
    hint = how.format(name=arg if source == arg else "NAME")
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(source, local_files_only=local_only)
    except Exception as exc:
        where = " (HF_HUB_OFFLINE=1 and it is not in the local cache)" if local_only and source == arg else ""
        raise BackboneError(f"backbone {spec!r}: cannot load the model config{where} [{_short(exc)}]; {hint}") from None
    if getattr(config, "model_type", None) != "clip":
        raise BackboneError(
            f"backbone {spec!r} is a {getattr(config, 'model_type', '?')!r} checkpoint, expected a transformers "
            "CLIP ('clip'); OpenCLIP models such as BiomedCLIP load with 'open_clip:hf-hub:NAME'"
        )
    try:
        from transformers import AutoTokenizer, CLIPModel

        model = CLIPModel.from_pretrained(source, attn_implementation="eager", local_files_only=local_only)
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
    except Exception as exc:
        raise BackboneError(f"backbone {spec!r}: cannot load weights/tokenizer [{_short(exc)}]; {hint}") from None
    try:
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

        processor = CLIPImageProcessorPil.from_pretrained(source, local_files_only=local_only)
    except Exception:
        size = int(config.vision_config.image_size)
        warnings.warn(
            f"backbone {spec!r} has no preprocessor_config.json; using OpenAI CLIP preprocessing at {size} px",
            stacklevel=2,
        )
        processor = _image_processor(size)
    model.eval()
    return HFCLIPBackbone(model, tokenizer, processor, name=spec)


# ---------------------------------------------------------------------------------------------
# tiny-clip[:SEED]
# ---------------------------------------------------------------------------------------------

TINY_SPECIALS = ("<pad>", "<unk>", "<sot>", "<eot>")
TINY_WORDS = tuple(
    """
    a an the of in on at with and or no not without is are was were be there this that it its
    photo image picture scan view slide patch region area part shows showing seen visible present
    absent normal abnormal benign malignant lesion mass nodule tumor tumour cyst cell cells tissue
    skin mole nevus melanoma carcinoma keratosis dermatofibroma vascular pigment pigmented network
    globules dots streaks blotch regression structure structures veil blue white black brown dark
    light red pink gray grey yellow irregular regular atypical typical asymmetric symmetric border
    borders edge shape round oval large small tiny multiple single diffuse focal central peripheral
    left right upper lower middle base apex lobe lung lungs chest heart cardiac pleural effusion
    pneumonia pneumothorax consolidation opacity opacities atelectasis edema cardiomegaly fracture
    rib spine bone bones liver kidney brain breast retina eye fundus x ray xray ct mri ultrasound
    dermoscopy dermoscopic histology microscopy radiograph radiology report finding findings
    impression diagnosis disease healthy class category concept because located has have
    showing signs sign of evidence increased decreased mild moderate severe acute chronic
    inflammation infection hemorrhage calcification fibrosis necrosis texture smooth rough
    """.split()
)
_TINY_CHARS = tuple("abcdefghijklmnopqrstuvwxyz0123456789.,;:!?'\"-()/[]+*%&#=<>_")


def tiny_vocab() -> dict[str, int]:
    """Deterministic vocabulary: specials, the word list, single characters and '##' continuations."""
    vocab: dict[str, int] = {}
    for tok in (*TINY_SPECIALS, *TINY_WORDS, *_TINY_CHARS, *("##" + c for c in _TINY_CHARS)):
        vocab.setdefault(tok, len(vocab))
    return vocab


def tiny_tokenizer(context_length: int = 32) -> Any:
    """An in-memory lower-casing word-piece tokenizer: whole words from `TINY_WORDS`, anything
    else spelled out in characters (accents stripped; unknown characters -> <unk>); every text
    becomes `<sot> ... <eot>`, truncated to `context_length` with `<eot>` kept."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = tiny_vocab()
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="<unk>", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True, clean_text=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="<sot> $A <eot>", special_tokens=[("<sot>", vocab["<sot>"]), ("<eot>", vocab["<eot>"])]
    )
    tok.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<sot>",
        eos_token="<eot>",
        model_max_length=context_length,
    )


def tiny_clip_config(vocab_size: int, context_length: int = 32) -> Any:
    """ViT image 32 px / patch 8 / width 32 / 2 layers / 2 heads; text width 32, 2 layers,
    2 heads, `context_length` positions; joint space 16."""
    from transformers import CLIPConfig

    vocab = tiny_vocab()
    config = CLIPConfig(
        text_config=dict(
            vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, max_position_embeddings=context_length,
            pad_token_id=vocab["<pad>"], bos_token_id=vocab["<sot>"], eos_token_id=vocab["<eot>"],
        ),
        vision_config=dict(
            image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2,
        ),
        projection_dim=16,
    )
    config._attn_implementation = "eager"
    return config


@register_backbone("tiny-clip")
def tiny_clip(arg: str | None) -> HFCLIPBackbone:
    """`tiny-clip[:SEED]`: a tiny random CLIP built in memory (seed 0 by default)."""
    try:
        seed = int(arg) if arg else 0
    except ValueError:
        raise BackboneError(f"backbone 'tiny-clip:{arg}': the argument must be an integer seed") from None
    from transformers import CLIPModel

    tokenizer = tiny_tokenizer()
    config = tiny_clip_config(len(tokenizer), context_length=32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config)
    model.eval()
    return HFCLIPBackbone(model, tokenizer, _image_processor(32), name="tiny-clip" if not arg else f"tiny-clip:{seed}")
