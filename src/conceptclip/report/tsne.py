"""t-SNE of a prompt method's learned context tokens against concept (and class-name) tokens, in
the text tower's token-embedding space (XCoOp's prompt-token figure).

Points: each learned context vector (one per position M; class-specific contexts give one set
per class), the mean token embedding of each concept phrase, and of each class name. A method
provides its coordinates through its prompt modules' `context_vectors()` hook (`prompts.ContextPrompt`,
and `prompts.MatchedContextPrompt` of XCoOp's matched soft prompt; `explain.textual.context_vectors`);
methods without learned context tokens get no plot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from conceptclip.errors import ConfigError


@dataclass
class TokenPoints:
    """(N, 2) t-SNE coordinates with one kind ("prompt" / "concept" / "class") and label per point."""

    coords: np.ndarray
    kinds: list[str]
    labels: list[str]


def phrase_embeddings(backbone: Any, phrases: Sequence[str]) -> torch.Tensor:
    """Mean token embedding (P, W) of each phrase's content tokens (between the start and end
    tokens), read from the backbone's token-embedding table."""
    if not phrases:
        raise ConfigError("phrase_embeddings: expected at least one phrase")
    tokens = backbone.tokenize(list(phrases))
    table = backbone.token_embedding.weight.detach().float().cpu()
    out = []
    for ids, eot in zip(tokens.input_ids, tokens.eot_index):
        content = ids[1:int(eot)]
        out.append(table[content].mean(0) if len(content) else table[ids[:1]].mean(0))
    return torch.stack(out)


def prompt_token_points(method: Any, concepts: Sequence[str], *, seed: int = 0) -> TokenPoints | None:
    """t-SNE of the method's context vectors vs concept and class-name tokens; None when the
    method has no learned context tokens."""
    from sklearn.manifold import TSNE

    from conceptclip.explain.textual import context_vectors

    contexts = context_vectors(method)
    if not contexts:
        return None
    vecs, kinds, labels = [], [], []
    classnames = list(method.classnames)
    for blocks in contexts:  # per prompt module: one shared block or one per class
        for b, block in enumerate(blocks):
            block = block.float().cpu()
            prefix = f"{classnames[b]}:" if len(blocks) > 1 and b < len(classnames) else ""
            for m, v in enumerate(block):
                vecs.append(v)
                kinds.append("prompt")
                labels.append(f"{prefix}ctx{m + 1}")
    for kind, names in (("concept", list(concepts)), ("class", classnames)):
        if names:
            vecs.extend(phrase_embeddings(method.backbone, names))
            kinds.extend([kind] * len(names))
            labels.extend(names)
    x = torch.stack(vecs).numpy().astype(np.float64)
    n = x.shape[0]
    if n < 4:
        return None
    perplexity = float(max(2.0, min(30.0, (n - 1) / 3)))
    method = "exact" if n < 500 else "barnes_hut"  # exact is cheap for the few hundred tokens of a prompt
    coords = TSNE(n_components=2, perplexity=perplexity, init="pca", method=method,
                  random_state=seed).fit_transform(x)
    return TokenPoints(coords, kinds, labels)
