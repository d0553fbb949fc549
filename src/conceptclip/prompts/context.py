"""Learnable context vectors spliced into class prompts: the mechanics CoOp introduced and every
prompt-learning method here reuses (CoCoOp, KgCoOp, ProGrad, BiomedCoOp, XCoOp, ...).

Prompts are tokenised once with `n_ctx` placeholder words; the placeholder positions are found by
tokenising the same prompts with two different placeholder words and diffing the ids, which works
for any tokenizer (BPE, WordPiece) and any class name. At each step the learned vectors replace
the token embeddings at those positions and the frozen text encoder runs on all classes at once.
A prompt longer than the backbone's context length is refused at construction: tokenizers
truncate silently, which would drop the class name.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from conceptclip.backbones.base import Backbone, TokenBatch
from conceptclip.errors import ConfigError, PromptLengthError

POSITIONS = ("end", "middle", "front")
# method-config field -> ContextPrompt argument, for `ContextPrompt.from_config`
_CONFIG_FIELDS = {"n_ctx": "n_ctx", "ctx_init": "ctx_init", "class_token_position": "position",
                  "class_specific": "class_specific", "init_std": "init_std"}


def _prompt_text(placeholder: str, n_ctx: int, classname: str, position: str, suffix: str) -> str:
    words = [placeholder] * n_ctx
    if position == "end":
        return " ".join(words + [classname]) + suffix
    if position == "middle":
        half = n_ctx // 2
        return " ".join(words[:half] + [classname] + words[half:]) + suffix
    return " ".join([classname] + words) + suffix


def check_prompts_fit(backbone: Backbone, names: Sequence[str], n_ctx: int, position: str, suffix: str,
                      from_init: bool = False) -> None:
    """Refuse prompts of `n_ctx` context tokens + class name + suffix longer than the context length.

    Tokenizers truncate silently (keeping the end token), so a too-long prompt loses its suffix, its
    class name (every class then gets the same prompt) or context tokens. Each placeholder word is
    one token and tokenizers split at spaces, so a prompt needs n_ctx + the tokens of the prompt
    without context (class name, suffix, start/end tokens).
    """
    rest = backbone.tokenize([_prompt_text("X", 0, c, position, suffix) for c in names]).attention_mask.sum(1)
    limit = backbone.context_length
    needed = rest + n_ctx
    if int(needed.max()) <= limit:
        return
    bad = int(needed.argmax())
    fit = limit - int(rest.max())  # the most context tokens every class leaves room for
    at_least = "at least " if int(rest[bad]) >= limit else ""  # the prompt without context was cut too
    if fit < 1:
        hint = "shorten the class name"
    elif from_init:
        hint = f"use a ctx_init of at most {fit} tokens"
    else:
        hint = f"use n_ctx <= {fit}"
    raise PromptLengthError(f"class {names[bad]!r}: the prompt needs {at_least}{int(needed[bad])} tokens "
                            f"({n_ctx} context + {int(rest[bad])} for the class name, {suffix!r} and start/end "
                            f"tokens) but only {limit} are available (the backbone's context length); the "
                            f"tokenizer would cut the prompt and could drop the class name: {hint}")


def placeholder_positions(backbone: Backbone, texts_a: Sequence[str], texts_b: Sequence[str], n_ctx: int) -> tuple[TokenBatch, torch.Tensor]:
    """Token positions (T, n_ctx) where `texts_a` and `texts_b` differ (the placeholders)."""
    tok_a, tok_b = backbone.tokenize(texts_a), backbone.tokenize(texts_b)
    if tok_a.input_ids.shape != tok_b.input_ids.shape:
        raise ConfigError("placeholder words tokenised to different lengths; choose single-token placeholders")
    diff = tok_a.input_ids != tok_b.input_ids
    counts = diff.sum(1)
    if not bool((counts == n_ctx).all()):
        bad = int((counts != n_ctx).nonzero()[0, 0])
        raise PromptLengthError(f"prompt {texts_a[bad]!r} keeps {int(counts[bad])} of its {n_ctx} context tokens: "
                                f"it is longer than the backbone's context length ({backbone.context_length}); "
                                "use fewer tokens")
    pos = torch.stack([row.nonzero().squeeze(1) for row in diff])
    return tok_a, pos


class ContextPrompt(nn.Module):
    """CoOp's prompt learner: `[V]_1 ... [V]_M [CLASS].` with learnable `[V]` (Zhou et al., IJCV 2022, Eq. 2).

    Args:
        n_ctx: number of context vectors M (CoOp: 16; ignored when `ctx_init` is given).
        ctx_init: words whose token embeddings initialise the context (e.g. "a photo of a").
        position: where the class token goes: "end", "middle" or "front".
        class_specific: one context per class (CSC) instead of one shared context.
        init_std: std of the Gaussian initialisation N(0, std^2) of random contexts.
        suffix: text after the prompt (a full stop by default).
    """

    def __init__(self, backbone: Backbone, classnames: Sequence[str], n_ctx: int = 16, ctx_init: str | None = None,
                 position: str = "end", class_specific: bool = False, init_std: float = 0.02,
                 suffix: str = ".") -> None:
        super().__init__()
        if position not in POSITIONS:
            raise ConfigError(f"class_token_position={position!r}: expected one of {POSITIONS}")
        if not classnames:
            raise ConfigError("classnames: expected at least one class")
        names = [c.replace("_", " ") for c in classnames]
        init_vectors = None
        if ctx_init:
            init_tok = backbone.tokenize([ctx_init.strip()])
            special = set(backbone.tokenize([""]).input_ids[0].tolist())
            ids = [int(i) for i, m in zip(init_tok.input_ids[0], init_tok.attention_mask[0]) if m and int(i) not in special]
            n_ctx = len(ids)
            with torch.no_grad():
                init_vectors = backbone.token_embedding(torch.tensor(ids, device=backbone.device)).float().cpu()
        if n_ctx < 1:
            raise ConfigError(f"n_ctx={n_ctx}: expected at least one context token")
        self.n_ctx, self.position, self.class_specific = n_ctx, position, class_specific
        check_prompts_fit(backbone, names, n_ctx, position, suffix, from_init=init_vectors is not None)
        texts_a = [_prompt_text("X", n_ctx, c, position, suffix) for c in names]
        texts_b = [_prompt_text("Y", n_ctx, c, position, suffix) for c in names]
        tokens, pos = placeholder_positions(backbone, texts_a, texts_b, n_ctx)
        self.prompts = texts_a
        self.register_buffer("input_ids", tokens.input_ids, persistent=False)
        self.register_buffer("attention_mask", tokens.attention_mask, persistent=False)
        self.register_buffer("eot_index", tokens.eot_index, persistent=False)
        self.register_buffer("ctx_positions", pos, persistent=False)
        with torch.no_grad():
            embeds = backbone.token_embedding(tokens.input_ids.to(backbone.device)).detach().cpu()
        self.register_buffer("token_embeds", embeds, persistent=False)
        width = embeds.shape[-1]
        shape = (len(names), n_ctx, width) if class_specific else (n_ctx, width)
        if init_vectors is not None:
            ctx = init_vectors.expand(shape).clone()
        else:
            ctx = torch.empty(shape).normal_(0.0, init_std)
        self.ctx = nn.Parameter(ctx)
        self._backbone = [backbone]  # not a submodule: the method owns the backbone

    @classmethod
    def from_config(cls, backbone: Backbone, classnames: Sequence[str], config: Any) -> "ContextPrompt":
        """The prompt a method config describes, so every CoOp-style method builds it the same way.

        Reads `n_ctx`, `ctx_init` (empty = random init), `class_token_position`, `class_specific` and
        `init_std` where the config has them; a missing field keeps this constructor's default.
        """
        kwargs = {arg: getattr(config, field) for field, arg in _CONFIG_FIELDS.items() if hasattr(config, field)}
        if "ctx_init" in kwargs:
            kwargs["ctx_init"] = kwargs["ctx_init"] or None
        return cls(backbone, classnames, **kwargs)

    @property
    def tokens(self) -> TokenBatch:
        return TokenBatch(self.input_ids, self.attention_mask, self.eot_index)

    def context_vectors(self) -> list[torch.Tensor]:
        """The learned context vectors, detached: one (M, W) block for a shared context, one per class
        with class-specific context. The hook every prompt module with learned context tokens gives
        (`explain.textual.context_vectors` reads it for the textual explanation and the report's t-SNE)."""
        ctx = self.ctx.detach()
        return list(ctx.unbind(0)) if self.class_specific else [ctx]

    def embeds(self, ctx: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings with the context spliced in: (..., C, L, W) for ctx of shape (..., [C,] M, W)."""
        ctx = self.ctx if ctx is None else ctx
        c, l, w = self.token_embeds.shape
        if not self.class_specific:
            ctx = ctx.unsqueeze(-3).expand(*ctx.shape[:-2], c, self.n_ctx, w)  # (..., C, M, W)
        lead = ctx.shape[:-3]
        base = self.token_embeds.to(ctx.dtype).expand(*lead, c, l, w)
        index = self.ctx_positions.unsqueeze(-1).expand(c, self.n_ctx, w).expand(*lead, c, self.n_ctx, w)
        return base.scatter(-2, index, ctx)

    def forward(self, ctx: torch.Tensor | None = None) -> torch.Tensor:
        """Text features (C, D), or (B, C, D) for batched contexts."""
        backbone = self._backbone[0]
        embeds = self.embeds(ctx)
        lead = embeds.shape[:-3]
        c, l, w = embeds.shape[-3:]
        flat = embeds.reshape(-1, l, w)
        reps = flat.shape[0] // c
        tokens = self.tokens
        if reps > 1:
            tokens = TokenBatch(tokens.input_ids.repeat(reps, 1), tokens.attention_mask.repeat(reps, 1),
                                tokens.eot_index.repeat(reps))
        feats = backbone.encode_text(tokens, inputs_embeds=flat)
        return feats.reshape(*lead, c, -1)


def normalize(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1)
