"""Textual explanation of learned prompts: how far a learned prompt lies from each concept
prompt (XCoOp), and which vocabulary tokens its context vectors are nearest to (CoOp)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from conceptclip.errors import ConfigError
from conceptclip.metrics._validate import (
    ArrayLike,
    as_tensor,
    check_finite,
    check_positive_int,
    shape_str,
)


@dataclass
class ConceptDistance:
    """`distance` (P, K): cosine distance of prompt p to concept k, in concept order;
    `ranking` (P, K): concept indices from nearest to farthest (ties by lower index).
    A single (D,) prompt gives (K,) rows."""

    distance: torch.Tensor
    ranking: torch.Tensor


@dataclass
class NearestTokens:
    """`token_ids` (M, k): the nearest vocabulary ids of each context vector, nearest first;
    `distances` (M, k): their Euclidean distances. A single (D,) vector gives (k,) rows."""

    token_ids: torch.Tensor
    distances: torch.Tensor


def _matrix(x: ArrayLike, name: str) -> tuple[torch.Tensor, bool]:
    t = as_tensor(x, name)
    if t.ndim not in (1, 2) or t.numel() == 0:
        raise ConfigError(f"{name}: expected a non-empty (D,) or (P, D) embedding array, got {shape_str(t.shape)}")
    check_finite(t, name)
    return (t[None] if t.ndim == 1 else t).double(), t.ndim == 1


def prompt_concept_distance(prompt_embedding: ArrayLike, concept_embeddings: ArrayLike) -> ConceptDistance:
    """Cosine distance of each learned prompt embedding to each concept prompt embedding,
    ranked from nearest to farthest:

        d(p, c_k) = 1 - <p, c_k> / (||p|| ||c_k||)      in [0, 2]

    prompt_embedding (D,) or (P, D); concept_embeddings (K, D). Zero vectors are rejected
    (their direction is undefined).
    """
    p, single = _matrix(prompt_embedding, "prompt_embedding")
    c, _ = _matrix(concept_embeddings, "concept_embeddings")
    if c.shape[1] != p.shape[1]:
        raise ConfigError(
            f"concept_embeddings: expected width {p.shape[1]} to match prompt_embedding, got {shape_str(c.shape)}"
        )
    for t, name in ((p, "prompt_embedding"), (c, "concept_embeddings")):
        if bool((t.norm(dim=1) == 0).any()):
            raise ConfigError(f"{name}: expected non-zero vectors, found a zero vector")
    pn = p / p.norm(dim=1, keepdim=True)
    cn = c / c.norm(dim=1, keepdim=True)
    dist = 1.0 - pn @ cn.T
    order = torch.argsort(dist, dim=1, stable=True)
    return ConceptDistance(dist[0], order[0]) if single else ConceptDistance(dist, order)


def nearest_vocab_tokens(context_vectors: ArrayLike, token_embeddings: ArrayLike, k: int = 1) -> NearestTokens:
    """The k vocabulary tokens nearest to each learned context vector, by Euclidean distance
    in the token-embedding space (CoOp's interpretation of learned context):

        d(v_m, e_t) = ||v_m - e_t||_2,     returns the k smallest per m, ascending

    context_vectors (M, D) (or (D,)); token_embeddings (V, D). Returns the token ids and
    their distances, (M, k) each.
    """
    v, single = _matrix(context_vectors, "context_vectors")
    e, _ = _matrix(token_embeddings, "token_embeddings")
    if e.shape[1] != v.shape[1]:
        raise ConfigError(
            f"token_embeddings: expected width {v.shape[1]} to match context_vectors, got {shape_str(e.shape)}"
        )
    check_positive_int(k, "k")
    if k > e.shape[0]:
        raise ConfigError(f"k: expected at most {e.shape[0]} (the vocabulary size), got {k}")
    dist = torch.cdist(v, e, compute_mode="donot_use_mm_for_euclid_dist")
    order = torch.argsort(dist, dim=1, stable=True)[:, :k]
    values = dist.gather(1, order)
    return NearestTokens(order[0], values[0]) if single else NearestTokens(order, values)
