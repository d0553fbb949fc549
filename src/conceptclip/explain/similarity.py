"""Similarity explanations: image–prompt / image–concept similarity maps from patch tokens
(XCoOp's visual explanation) and concept scores from the global image feature (MONET-style)."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from conceptclip.backbones.base import ImageFeatures
from conceptclip.errors import ConfigError


def _check_text(text_features: torch.Tensor, width: int, name: str = "text_features") -> torch.Tensor:
    if not isinstance(text_features, torch.Tensor) or text_features.dim() != 2 or text_features.shape[0] == 0:
        got = tuple(text_features.shape) if isinstance(text_features, torch.Tensor) else type(text_features).__name__
        raise ConfigError(f"{name}: expected a non-empty (T, D) tensor, got {got}")
    if text_features.shape[1] != width:
        raise ConfigError(f"{name}: width {text_features.shape[1]} does not match the image features' {width}")
    return text_features


def similarity_maps(patches: torch.Tensor | ImageFeatures, text_features: torch.Tensor,
                    grid: tuple[int, int] | None = None) -> torch.Tensor:
    """Cosine similarity of every patch token with every text feature, on the patch grid:

        S[b, t, i, j] = <p_bij, t_t> / (||p_bij|| ||t_t||)        in [-1, 1]

    patches (B, N, D) with `grid` (h, w), h * w = N, or an `ImageFeatures` with patch tokens;
    text_features (T, D). Returns (B, T, h, w); differentiable.
    """
    if isinstance(patches, ImageFeatures):
        if patches.patches is None or patches.grid is None:
            raise ConfigError("similarity_maps: these image features have no patch tokens (encode with patches=True)")
        grid = grid or patches.grid
        patches = patches.patches
    if not isinstance(patches, torch.Tensor) or patches.dim() != 3:
        raise ConfigError(f"similarity_maps: expected patch tokens (B, N, D), got {getattr(patches, 'shape', patches)}")
    b, n, d = patches.shape
    if grid is None or grid[0] * grid[1] != n:
        raise ConfigError(f"similarity_maps: grid {grid} does not hold the {n} patch tokens")
    text = _check_text(text_features, d).to(patches.dtype)
    sim = F.normalize(patches, dim=-1) @ F.normalize(text, dim=-1).t()  # (B, N, T)
    return sim.transpose(1, 2).reshape(b, text.shape[0], *grid)


def concept_scores(image_features: torch.Tensor | ImageFeatures, concept_features: torch.Tensor,
                   reference_features: torch.Tensor | None = None, *, scale: float = 100.0) -> torch.Tensor:
    """Concept scores of images (B, K).

    Without a reference: cosine similarity s_bk = cos(x_b, c_k) of the global image feature with
    each concept prompt feature. `concept_features` may hold P prompts per concept, (K, P, D):
    s_bk is then the mean of the P similarities.

    With `reference_features` (D,) or (R, D) (e.g. "This is a dermatology image"), the MONET
    concept presence score (Kim et al., Nature Medicine 2024): the probability of the concept
    prompt against the reference prompt, with r_b the mean similarity to the reference prompts
    and `scale` CLIP's logit scale (1/temperature, 100 for trained CLIP models):

        score_bk = exp(scale s_bk) / (exp(scale s_bk) + exp(scale r_b)) = sigmoid(scale (s_bk - r_b))
    """
    x = image_features.global_ if isinstance(image_features, ImageFeatures) else image_features
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        raise ConfigError(f"concept_scores: expected image features (B, D), got {getattr(x, 'shape', x)}")
    c = concept_features
    if not isinstance(c, torch.Tensor) or c.dim() not in (2, 3) or c.shape[0] == 0 or c.shape[-1] != x.shape[1]:
        raise ConfigError(f"concept_scores: expected concept features (K, D) or (K, P, D) with D = {x.shape[1]}, "
                          f"got {getattr(c, 'shape', c)}")
    xn = F.normalize(x, dim=-1)
    sims = xn @ F.normalize(c.to(x.dtype), dim=-1).reshape(-1, x.shape[1]).t()  # (B, K*P)
    s = sims.reshape(x.shape[0], c.shape[0], -1).mean(dim=-1) if c.dim() == 3 else sims
    if reference_features is None:
        return s
    ref = reference_features[None] if reference_features.dim() == 1 else reference_features
    _check_text(ref, x.shape[1], "reference_features")
    r = (xn @ F.normalize(ref.to(x.dtype), dim=-1).t()).mean(dim=1, keepdim=True)  # (B, 1)
    return torch.sigmoid(scale * (s - r))


def top_concepts(scores: torch.Tensor, names: Sequence[str], k: int = 5) -> list[list[tuple[str, float]]]:
    """The k highest-scoring concepts of each image, as (name, score) pairs, best first."""
    if scores.dim() != 2 or scores.shape[1] != len(names):
        raise ConfigError(f"top_concepts: scores {tuple(scores.shape)} do not match {len(names)} concept names")
    k = min(k, len(names))
    values, idx = scores.detach().float().topk(k, dim=1)
    return [[(names[int(i)], float(v)) for v, i in zip(vr, ir)] for vr, ir in zip(values, idx)]
