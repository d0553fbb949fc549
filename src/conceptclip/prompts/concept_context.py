"""Soft prompts matched token for token to reference (concept) prompts.

XCoOp-style prompt learning pairs every class's learnable context with a hand-written reference
prompt of that class ("a dermoscopy image of melanoma, which has atypical pigment network, ..."):
the context of class c has exactly as many vectors M_c as the reference prompt has content tokens
(the tokens between the tokenizer's special tokens), so context vector m can be aligned with the
embedding of reference token m. Lengths differ per class, so the contexts are stored as one flat
(sum_c M_c, W) parameter and spliced into "[V]_1 ... [V]_{M_c} [CLASS]." by (row, position) index.

`ReferencePrompts` holds the tokenised references; `randomized` swaps their content tokens for
random vocabulary tokens of the same count (a knowledge intervention that keeps every length).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from conceptclip.backbones.base import Backbone, TokenBatch
from conceptclip.errors import ConfigError, PromptLengthError


def special_token_ids(backbone: Backbone) -> set[int]:
    """Ids the tokenizer adds around every text (start/end/pad), found by tokenising the empty text."""
    empty = backbone.tokenize([""])
    return {int(i) for i in empty.input_ids[0]} | {int(i) for i in getattr(getattr(backbone, "tokenizer", None),
                                                                       "all_special_ids", [])}


def pad_token_id(backbone: Backbone) -> int:
    """The id the tokenizer pads with, found by tokenising a short text next to a longer one."""
    tokens = backbone.tokenize(["", "a a a a"])
    pads = tokens.input_ids[0][tokens.attention_mask[0] == 0]
    if not len(pads):
        raise ConfigError(f"backbone {getattr(backbone, 'name', '?')!r}: its tokenizer does not pad")
    return int(pads[0])


@dataclass
class ReferencePrompts:
    """Tokenised reference prompts, one per class, with the content-token mask (C, L) (real tokens
    that are not special tokens). `texts` are the prompts as written (None where tokens were edited)."""

    tokens: TokenBatch
    content_mask: torch.Tensor
    texts: list[str | None]

    @property
    def lengths(self) -> list[int]:
        return [int(n) for n in self.content_mask.sum(1)]

    def content_ids(self) -> list[torch.Tensor]:
        """Per class, its content token ids (M_c,) in prompt order."""
        return [row[m] for row, m in zip(self.tokens.input_ids, self.content_mask)]

    def token_embeddings(self, backbone: Backbone) -> torch.Tensor:
        """Embeddings of every class's content tokens, concatenated in class order: (sum_c M_c, W)."""
        ids = torch.cat(self.content_ids()).to(backbone.device)
        with torch.no_grad():
            return backbone.token_embedding(ids).detach().float().cpu()

    @torch.no_grad()
    def features(self, backbone: Backbone) -> torch.Tensor:
        """Text features (C, D) of the reference prompts (not normalised), without gradients."""
        return backbone.encode_text(self.tokens.to(backbone.device)).float().cpu()

    def randomized(self, vocab_size: int, special_ids: set[int], seed: int = 0) -> "ReferencePrompts":
        """The same prompts with every content token replaced by a random non-special vocabulary
        token (seeded): same lengths, same special tokens, no knowledge left."""
        gen = torch.Generator().manual_seed(seed)
        allowed = torch.tensor(sorted(set(range(vocab_size)) - special_ids), dtype=torch.long)
        ids = self.tokens.input_ids.clone()
        n = int(self.content_mask.sum())
        ids[self.content_mask] = allowed[torch.randint(len(allowed), (n,), generator=gen)]
        tokens = TokenBatch(ids, self.tokens.attention_mask.clone(), self.tokens.eot_index.clone())
        return ReferencePrompts(tokens, self.content_mask.clone(), [None] * len(self.texts))


def reference_prompts(backbone: Backbone, texts: Sequence[str]) -> ReferencePrompts:
    """Tokenise one reference prompt per class; refuse prompts the backbone would truncate."""
    texts = list(texts)
    if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
        raise ConfigError(f"reference prompts: expected one non-empty text per class, got {texts!r}")
    tokens = backbone.tokenize(texts)
    full = tokens.attention_mask.sum(1)
    for text, n in zip(texts, full):
        if int(n) >= backbone.context_length:  # truncated, or no room left for the class name of the soft prompt
            raise PromptLengthError(f"reference prompt {text[:60]!r}... fills the backbone's context length "
                              f"({backbone.context_length} tokens); use fewer concepts (top_k)")
    special = special_token_ids(backbone)
    is_special = torch.zeros_like(tokens.input_ids, dtype=torch.bool)
    for s in special:
        is_special |= tokens.input_ids == s
    content = tokens.attention_mask.bool() & ~is_special
    if bool((content.sum(1) == 0).any()):
        raise ConfigError(f"reference prompts: a prompt has no content tokens ({texts!r})")
    return ReferencePrompts(tokens, content, texts)


def _soft_text(placeholder: str, n: int, classname: str, suffix: str) -> str:
    return " ".join([placeholder] * n + [classname]) + suffix


class MatchedContextPrompt(nn.Module):
    """Class-specific soft prompts "[V]_1 ... [V]_{M_c} [CLASS]." with M_c = `lengths[c]`.

    `ctx` is one (sum_c M_c, W) parameter; `slices[c]` gives class c's rows. `init` (same shape)
    initialises it (e.g. the reference token embeddings); otherwise N(0, init_std^2) as CoOp.
    """

    def __init__(self, backbone: Backbone, classnames: Sequence[str], lengths: Sequence[int],
                 init: torch.Tensor | None = None, init_std: float = 0.02, suffix: str = ".") -> None:
        super().__init__()
        names = [c.replace("_", " ") for c in classnames]
        lengths = [int(n) for n in lengths]
        if not names or len(lengths) != len(names):
            raise ConfigError(f"matched prompts: {len(lengths)} lengths for {len(names)} classes")
        if min(lengths) < 1:
            raise ConfigError(f"matched prompts: every class needs at least one context token, got lengths {lengths}")
        # as `check_prompts_fit`, per class: M_c placeholder words (one token each) + the prompt without
        # context must fit (a prompt filling the context exactly is not cut); tokenizers truncate silently
        rest = backbone.tokenize([_soft_text("X", 0, c, suffix) for c in names]).attention_mask.sum(1)
        limit = backbone.context_length
        for c, n in enumerate(lengths):
            if n + int(rest[c]) > limit:
                raise PromptLengthError(
                    f"soft prompt of class {names[c]!r} ({n} context tokens + class name) does not fit the backbone's "
                    f"context length: it needs {n + int(rest[c])} tokens, {limit} are available; use a shorter "
                    "reference prompt (fewer concepts)")
        texts_a = [_soft_text("X", n, c, suffix) for n, c in zip(lengths, names)]
        texts_b = [_soft_text("Y", n, c, suffix) for n, c in zip(lengths, names)]
        tok_a, tok_b = backbone.tokenize(texts_a), backbone.tokenize(texts_b)
        if tok_a.input_ids.shape != tok_b.input_ids.shape:
            raise ConfigError("placeholder words tokenised to different lengths; choose single-token placeholders")
        diff = tok_a.input_ids != tok_b.input_ids
        for c, (n, row) in enumerate(zip(lengths, diff)):
            if int(row.sum()) != n:
                raise ConfigError(f"soft prompt of class {names[c]!r} keeps {int(row.sum())} of its {n} context tokens; "
                                  "choose single-token placeholders")
        rows, cols = diff.nonzero(as_tuple=True)  # row-major: class by class, positions in order
        self.prompts = texts_a
        self.lengths = lengths
        self.register_buffer("input_ids", tok_a.input_ids, persistent=False)
        self.register_buffer("attention_mask", tok_a.attention_mask, persistent=False)
        self.register_buffer("eot_index", tok_a.eot_index, persistent=False)
        self.register_buffer("ctx_rows", rows, persistent=False)
        self.register_buffer("ctx_cols", cols, persistent=False)
        with torch.no_grad():
            embeds = backbone.token_embedding(tok_a.input_ids.to(backbone.device)).detach().cpu()
        self.register_buffer("token_embeds", embeds, persistent=False)
        shape = (sum(lengths), embeds.shape[-1])
        if init is not None:
            if tuple(init.shape) != shape:
                raise ConfigError(f"matched prompts: init of shape {tuple(init.shape)}, expected {shape}")
            ctx = init.detach().float().clone()
        else:
            ctx = torch.empty(shape).normal_(0.0, init_std)
        self.ctx = nn.Parameter(ctx)
        self._backbone = [backbone]  # not a submodule: the method owns the backbone

    @property
    def tokens(self) -> TokenBatch:
        return TokenBatch(self.input_ids, self.attention_mask, self.eot_index)

    @property
    def slices(self) -> list[slice]:
        ends = torch.tensor(self.lengths).cumsum(0).tolist()
        return [slice(e - n, e) for n, e in zip(self.lengths, ends)]

    def class_context(self, c: int) -> torch.Tensor:
        """Class c's context vectors (M_c, W)."""
        return self.ctx[self.slices[c]]

    def context_vectors(self) -> list[torch.Tensor]:
        """The learned context vectors, detached, one (M_c, W) block per class (the context-vector
        hook of `prompts.ContextPrompt.context_vectors`)."""
        ctx = self.ctx.detach()
        return [ctx[s] for s in self.slices]

    def embeds(self) -> torch.Tensor:
        """Token embeddings (C, L, W) with every class's context spliced in."""
        base = self.token_embeds.to(self.ctx.dtype)
        return base.index_put((self.ctx_rows, self.ctx_cols), self.ctx)

    def forward(self) -> torch.Tensor:
        """Text features (C, D) of the soft prompts (not normalised)."""
        return self._backbone[0].encode_text(self.tokens, inputs_embeds=self.embeds())
