"""Retrieval metrics on a query x gallery similarity matrix: precision@K and recall@K."""

from __future__ import annotations

from typing import Literal, Sequence

import torch

from conceptclip.errors import ConfigError
from conceptclip.metrics._tasks import safe_div
from conceptclip.metrics._validate import (
    ArrayLike,
    as_tensor,
    check_binary,
    check_choice,
    check_finite,
    check_positive_int,
    nanmean,
    shape_str,
)

Reduction = Literal["mean", "none"]
Result = float | torch.Tensor | dict[int, float | torch.Tensor]


def relevance_from_labels(query_labels: ArrayLike, gallery_labels: ArrayLike) -> torch.Tensor:
    """Relevance matrix (Q, G) bool from labels.

    Single-label (Q,) and (G,): rel_qg = [label_q == label_g]. Multi-label multi-hot (Q, L) and
    (G, L): rel_qg = [the two share at least one label].
    """
    q = as_tensor(query_labels, "query_labels")
    g = as_tensor(gallery_labels, "gallery_labels")
    if q.ndim == 1 and g.ndim == 1:
        return q[:, None] == g[None, :]
    if q.ndim == 2 and g.ndim == 2 and q.shape[1] == g.shape[1]:
        qb = check_binary(q, "query_labels").double()
        gb = check_binary(g, "gallery_labels").double()
        return (qb @ gb.T) > 0
    raise ConfigError(
        f"gallery_labels: expected (G,) labels or (G, {q.shape[-1] if q.ndim == 2 else 'L'}) multi-hot "
        f"matching query_labels {shape_str(q.shape)}, got {shape_str(g.shape)}"
    )


def _hits_at(similarity: ArrayLike, relevance: ArrayLike, ks: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    s = as_tensor(similarity, "similarity")
    if s.ndim != 2 or s.numel() == 0:
        raise ConfigError(f"similarity: expected a non-empty (Q, G) matrix, got {shape_str(s.shape)}")
    check_finite(s, "similarity")
    r = as_tensor(relevance, "relevance")
    if r.shape != s.shape:
        raise ConfigError(f"relevance: expected shape {shape_str(s.shape)} to match similarity, got {shape_str(r.shape)}")
    rel = check_binary(r, "relevance").to(s.device)
    for k in ks:
        check_positive_int(k, "k")
        if k > s.shape[1]:
            raise ConfigError(f"k: expected at most {s.shape[1]} (the gallery size), got {k}")
    order = torch.argsort(s, dim=1, descending=True, stable=True)
    ranked = rel.gather(1, order[:, : max(ks)]).double()
    cum = ranked.cumsum(dim=1)  # (Q, max K): relevant items within the top j+1
    hits = torch.stack([cum[:, k - 1] for k in ks], dim=1)  # (Q, len(ks))
    return hits, rel.sum(dim=1).double(), list(ks)


def _as_ks(k: int | Sequence[int]) -> tuple[list[int], bool]:
    if isinstance(k, (list, tuple)):
        if not k:
            raise ConfigError("k: expected at least one cut-off")
        return list(k), True
    return [k], False


def _finish(values: torch.Tensor, ks: list[int], many: bool, reduction: Reduction) -> Result:
    check_choice(reduction, "reduction", ("mean", "none"))
    out = {k: (nanmean(values[:, i]) if reduction == "mean" else values[:, i]) for i, k in enumerate(ks)}
    return out if many else out[ks[0]]


def precision_at_k(
    similarity: ArrayLike, relevance: ArrayLike, k: int | Sequence[int] = 1, *, reduction: Reduction = "mean"
) -> Result:
    """precision@K = |top-K(q) ∩ Rel(q)| / K, averaged over queries.

    top-K(q) are the K gallery items of highest similarity (ties by lower gallery index);
    `relevance` (Q, G) is 0/1 (see `relevance_from_labels`). A list of K gives a dict {K: value}.
    """
    ks, many = _as_ks(k)
    hits, _, ks = _hits_at(similarity, relevance, ks)
    return _finish(hits / torch.tensor(ks, dtype=torch.float64, device=hits.device), ks, many, reduction)


def recall_at_k(
    similarity: ArrayLike, relevance: ArrayLike, k: int | Sequence[int] = 1, *, reduction: Reduction = "mean"
) -> Result:
    """recall@K = |top-K(q) ∩ Rel(q)| / |Rel(q)|, averaged over queries with |Rel(q)| > 0
    (NaN per query otherwise). A list of K gives a dict {K: value}."""
    ks, many = _as_ks(k)
    hits, n_rel, ks = _hits_at(similarity, relevance, ks)
    return _finish(safe_div(hits, n_rel[:, None].expand_as(hits)), ks, many, reduction)
