"""Textual explanation of a learned prompt: which concept prompts each learned class prompt lies
nearest to (XCoOp), and which vocabulary words its context vectors are nearest to (CoOp)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from conceptclip.errors import ConfigError
from conceptclip.explain.method import method_text_features
from conceptclip.metrics.prompt_distance import nearest_vocab_tokens, prompt_concept_distance


@dataclass
class PromptExplanation:
    """`distance` (C, K): cosine distance of class prompt c to concept k; `ranking` (C, K):
    concepts nearest first; `context_tokens`: per context (one shared, or one per class with
    class-specific context) the k nearest vocabulary tokens of each of its M vectors, as
    [[(token, euclidean distance), ...] per vector]."""

    classnames: list[str]
    concepts: list[str]
    distance: torch.Tensor
    ranking: torch.Tensor
    context_tokens: list[list[list[tuple[str, float]]]] = field(default_factory=list)

    def nearest_concepts(self, k: int = 5) -> dict[str, list[tuple[str, float]]]:
        """Per class, its k nearest concepts with their distances."""
        return {c: [(self.concepts[int(j)], float(self.distance[i, j])) for j in self.ranking[i, :k]]
                for i, c in enumerate(self.classnames)}

    def to_dict(self, k: int = 5) -> dict[str, Any]:
        return {"nearest_concepts": {c: [{"concept": n, "distance": d} for n, d in rows]
                                     for c, rows in self.nearest_concepts(k).items()},
                "context_tokens": [[[{"token": t, "distance": d} for t, d in vec] for vec in ctx]
                                   for ctx in self.context_tokens]}


def context_vectors(method: Any) -> list[list[torch.Tensor]]:
    """The learned context vectors of a prompt method: per prompt module that has them (the
    `context_vectors()` hook of `prompts.ContextPrompt` and `prompts.MatchedContextPrompt`), its
    blocks of (M, W) vectors, one shared block or one per class."""
    out = []
    for m in method.modules():
        hook = getattr(type(m), "context_vectors", None)
        if callable(hook):
            out.append(list(m.context_vectors()))
    return out


def decode_tokens(backbone: Any, ids: Sequence[int]) -> list[str]:
    tok = getattr(backbone, "tokenizer", None)
    if tok is not None and hasattr(tok, "convert_ids_to_tokens"):
        return [str(t) for t in tok.convert_ids_to_tokens([int(i) for i in ids])]
    return [str(int(i)) for i in ids]


def explain_prompt(method: Any, concept_features: torch.Tensor, concepts: Sequence[str], *,
                   k_tokens: int = 3) -> PromptExplanation:
    """Rank `concepts` (K names, their prompt features (K, D)) by cosine distance to each of the
    method's learned class prompt features (`metrics.prompt_concept_distance`), and list the
    `k_tokens` vocabulary tokens nearest to each context vector (`metrics.nearest_vocab_tokens`)."""
    if concept_features.dim() != 2 or concept_features.shape[0] != len(concepts):
        raise ConfigError(f"concept_features: expected ({len(concepts)}, D) for {len(concepts)} concepts, "
                          f"got {tuple(concept_features.shape)}")
    with torch.no_grad():
        classes = method_text_features(method).detach().float().cpu()
    dist = prompt_concept_distance(classes, concept_features.detach().float().cpu())
    backbone = method.backbone
    table = backbone.token_embedding.weight.detach().float().cpu()
    contexts = []
    for blocks in context_vectors(method):  # per prompt module: one shared block or one per class
        for block in blocks:
            near = nearest_vocab_tokens(block.float().cpu(), table, k=k_tokens)
            contexts.append([list(zip(decode_tokens(backbone, ids), [float(d) for d in ds]))
                             for ids, ds in zip(near.token_ids, near.distances)])
    return PromptExplanation(list(method.classnames), list(concepts), dist.distance, dist.ranking, contexts)
