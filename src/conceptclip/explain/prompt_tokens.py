"""XCoOp's explanations as data (drawing is report/'s job): which class each clinical concept belongs
to and whether the learned class prompts agree (textual explanation), how the learned soft tokens
sit against the clinical-prompt tokens at their positions, and their t-SNE coordinates.

The functions read an XCoOp method duck-typed (`knowledge`, `classnames`, `concept_names`,
`concept_features`, `soft_tokens()`, `soft_rows`, `soft_cols`, `token_targets`, `clinical_ids`,
`reference`, `backbone`), so this module sits below methods/ and `methods.xcoop` re-exports it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from conceptclip.errors import ConfigError
from conceptclip.explain.textual import PromptExplanation, explain_prompt


# -- explanations as data (drawing is report/'s job) ------------------------------------------
def home_classes(knowledge: Any, classnames: Sequence[str], concepts: Sequence[str],
                 margin: float = 0.2) -> dict[int, int]:
    """{concept index: class index} for concepts that belong to one class: listed by one class only,
    or whose bank frequency in one class beats every other class's by at least `margin`."""
    out = {}
    for k, name in enumerate(concepts):
        holders = [(knowledge.frequency.get(c, {}).get(name), i) for i, c in enumerate(classnames)
                   if name in knowledge.concepts.get(c, [])]
        if len(holders) == 1:
            out[k] = holders[0][1]
        elif holders and all(f is not None for f, _ in holders):
            ranked = sorted(holders, reverse=True)
            if ranked[0][0] - ranked[1][0] >= margin:
                out[k] = ranked[0][1]
    return out


def concept_class_agreement(distance: torch.Tensor, home: dict[int, int]) -> float | None:
    """Share of concepts whose nearest learned class prompt is their home class, after removing each
    class prompt's mean distance (so a prompt near everything does not win every concept):

        d'_{ck} = d_{ck} - (1/K) sum_k' d_{ck'},   agreement = mean_{k in home} [argmin_c d'_{ck} = home(k)]
    """
    if not home:
        return None
    centred = distance - distance.mean(dim=1, keepdim=True)
    nearest = centred.argmin(dim=0)
    return sum(int(nearest[k]) == c for k, c in home.items()) / len(home)


@torch.no_grad()
def token_alignment_stats(method: Any) -> dict[str, dict[str, float]]:
    """Per class: mean Euclidean distance of each soft token to the clinical-prompt token at its
    position ("matched") and to the class's other clinical content tokens ("unmatched"), and the share
    of soft tokens whose nearest vocabulary token is the one at its position ("nearest_token_match")."""
    from conceptclip.metrics.prompt_distance import nearest_vocab_tokens

    table = method.backbone.token_embedding.weight.detach().float().cpu()
    ctx, rows, cols = method.soft_tokens().detach().float().cpu(), method.soft_rows.cpu(), method.soft_cols.cpu()
    ids, mask = method.clinical_ids.cpu(), method.reference.content_mask.cpu()
    out = {}
    for c, name in enumerate(method.classnames):
        v, at = ctx[rows == c], cols[rows == c]
        content = mask[c].nonzero().squeeze(1)  # positions of the class's clinical content tokens
        d = torch.cdist(v, table[ids[c, content]])
        same = content[None, :] == at[:, None]  # (soft token, content token) at the same position
        near = nearest_vocab_tokens(v, table, k=1).token_ids[:, 0]
        out[name] = {"matched": float(d[same].mean()) if same.any() else float("nan"),
                     "unmatched": float(d[~same].mean()) if (~same).any() else float("nan"),
                     "nearest_token_match": float((near == ids[c, at]).float().mean())}
    return out


@dataclass
class TextualExplanation(PromptExplanation):
    """`explain.PromptExplanation` (distance (C, K) of learned class prompt c to clinical concept k,
    ranking nearest first) plus XCoOp's `home` classes of the concepts, `agreement`
    (`concept_class_agreement`) and `tokens` (`token_alignment_stats`)."""

    home: dict[int, int] = field(default_factory=dict)
    agreement: float | None = None
    tokens: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self, k: int = 5) -> dict[str, Any]:
        return {"nearest_concepts": super().to_dict(k)["nearest_concepts"],
                "home_class": {self.concepts[j]: self.classnames[c] for j, c in self.home.items()},
                "concept_class_agreement": self.agreement, "token_alignment": self.tokens}


def explain_textually(method: Any, concepts: Sequence[str] | None = None, margin: float = 0.2) -> TextualExplanation:
    """XCoOp's textual explanation: every learned class prompt's cosine distance to every clinical
    concept prompt, ranked (`explain.explain_prompt`), with the agreement and token statistics."""
    names = list(concepts) if concepts is not None else method.concept_names
    feats = method.concept_features(names)
    base = explain_prompt(method, feats, names)
    home = home_classes(method.knowledge, method.classnames, names, margin)
    return TextualExplanation(list(method.classnames), names, base.distance, base.ranking, home=home,
                              agreement=concept_class_agreement(base.distance, home),
                              tokens=token_alignment_stats(method))


@dataclass
class TokenTSNE:
    """2-D t-SNE coordinates (2N, 2) of the N learned soft tokens followed by the N clinical-prompt
    tokens at their positions; `kind` "learned"/"concept", `class_index` and `position` per point,
    `token` the concept-prompt token each point is paired with."""

    coords: torch.Tensor
    kind: list[str]
    class_index: torch.Tensor
    position: torch.Tensor
    token: list[str]


@torch.no_grad()
def prompt_token_tsne(method: Any, perplexity: float = 30.0, seed: int = 0, threads: int | None = 1) -> TokenTSNE:
    """t-SNE (scikit-learn, Barnes-Hut) of the learned soft tokens together with the concept-prompt
    token embeddings. A few hundred points: one thread by default (`threads`), since OpenMP threads
    competing for a busy CPU made it some 70x slower here; None lets scikit-learn choose."""
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    ctx, targets = method.soft_tokens().detach().float().cpu(), method.token_targets.float().cpu()
    x = torch.cat([ctx, targets]).numpy()
    n = ctx.shape[0]
    if 2 * n < 4:
        raise ConfigError(f"t-SNE needs at least 4 points, the prompts have {2 * n}")
    perplexity = min(perplexity, (2 * n - 1) / 3)
    with threadpool_limits(limits=threads):
        coords = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
    cls = method.soft_rows.cpu()
    counts = torch.bincount(cls, minlength=len(method.classnames))
    pos = torch.arange(n) - (counts.cumsum(0) - counts)[cls]
    tok = getattr(method.backbone, "tokenizer", None)
    ids = method.clinical_ids.cpu()[cls, method.soft_cols.cpu()].tolist()
    words = tok.convert_ids_to_tokens(ids) if hasattr(tok, "convert_ids_to_tokens") else [str(i) for i in ids]
    return TokenTSNE(torch.from_numpy(coords).float(), ["learned"] * n + ["concept"] * n, cls.repeat(2),
                     pos.repeat(2), [str(w) for w in words] * 2)
