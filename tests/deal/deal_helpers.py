"""Helpers for the DEAL tests (imported by name: pytest puts this folder on sys.path)."""

from __future__ import annotations

import torch

CONCEPTS = {
    "melanoma": ["blue veil", "dark dots", "streaks"],
    "nevus": ["pigment network", "brown globules"],
    "keratosis": ["white cells", "smooth edge", "pink area"],
}


def make_deal(backbone, config: dict | None = None, seed: int = 0, perturb: bool = True):
    """DEAL on `backbone` over CONCEPTS; `perturb` moves the adapter off its identity start (seeded),
    so that every gradient path is exercised."""
    from conceptclip.methods import create_method

    torch.manual_seed(seed)
    method = create_method("deal", backbone, list(CONCEPTS), {"concepts": CONCEPTS, **(config or {})})
    if perturb and hasattr(method.adapter, "linear"):
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            method.adapter.linear.weight.add_(0.1 * torch.randn(method.adapter.linear.weight.shape, generator=g))
            method.adapter.linear.bias.add_(0.1 * torch.randn(method.adapter.linear.bias.shape, generator=g))
    return method


def token_batch(dim: int, n: int = 6, side: int = 4, seed: int = 0, classes: int = 3) -> dict[str, torch.Tensor]:
    """Random patch tokens (n, side^2, dim); global feature = their mean (as on `lite`)."""
    g = torch.Generator().manual_seed(seed)
    patches = torch.randn(n, side * side, dim, generator=g)
    return {"features": patches.mean(1), "patches": patches, "labels": torch.arange(n) % classes,
            "index": torch.arange(n)}
