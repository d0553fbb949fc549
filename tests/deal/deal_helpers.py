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


def entangled_parts(method, per_class: int, seed: int, side: int = 6, cells: int = 2, a: float = 1.0,
                    b: float = 0.5, noise: float = 0.05) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Synthetic patch tokens with known part masks, in which the concepts are entangled.

    Each image of class c holds one part per concept of c, `cells` random grid cells each; the other
    cells are background. With t_k the untrained model's explained concept texts (the raw phrases by
    default, the concept prompts with explain_prompts="template"), u their normalised
    mean (what all concept prompts share) and r_k = normalise(t_k - (t_k.u) u) what is particular to
    concept k, a cell of part k holds a u + b r_k + noise (mostly "object", a little "part k"), a
    background cell a fixed random direction + noise; the global feature is the mean token (as on
    `lite`). Zero-shot concept maps then all light up every part: entangled, as DEAL's paper finds
    for CLIP. Returns the batch and the part masks (n, Kmax, side, side) of each image's concepts."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        t = method.explain_text()[method.n_classes:]
    u = torch.nn.functional.normalize(t.mean(0), dim=0)
    r = torch.nn.functional.normalize(t - (t @ u)[:, None] * u, dim=-1)
    background = torch.nn.functional.normalize(torch.randn(t.shape[1], generator=torch.Generator().manual_seed(99)), dim=0)
    kmax, n = method.concept_index.shape[1], side * side
    tokens, masks, labels = [], [], []
    for c in range(method.n_classes):
        rows = method.concept_index[c][method.concept_mask[c]].tolist()
        for _ in range(per_class):
            x = 0.5 * background + noise * torch.randn(n, t.shape[1], generator=g)
            where = torch.randperm(n, generator=g)[: len(rows) * cells].view(len(rows), cells)
            mask = torch.zeros(kmax, side, side, dtype=torch.bool)
            for k, row in enumerate(rows):
                for cell in where[k].tolist():
                    x[cell] = a * u + b * r[row] + noise * torch.randn(t.shape[1], generator=g)
                    mask[k, cell // side, cell % side] = True
            tokens.append(x)
            masks.append(mask)
            labels.append(c)
    patches = torch.stack(tokens)
    batch = {"features": patches.mean(1), "patches": patches, "labels": torch.tensor(labels),
             "index": torch.arange(len(labels))}
    return batch, torch.stack(masks)
