"""The report's prompt-token t-SNE and the textual explanation read every prompt module's one
`context_vectors()` hook: XCoOp's paper soft prompt (class-specific `ContextPrompt`) and its matched
soft prompt (`MatchedContextPrompt`, one block of M_c vectors per class) both get them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

CLASSES = ["melanoma", "nevus"]
PROMPTS = {"melanoma": "a photo of melanoma, which has blue veil.", "nevus": "a photo of nevus, which has round shape."}
CONCEPTS = ["blue veil", "round shape"]


def _xcoop(tiny_clip, soft_prompt: str):
    from conceptclip.methods import create_method

    options = {"concept_prompts": dict(PROMPTS), "soft_prompt": soft_prompt}
    if soft_prompt == "matched":
        options["ctx_init"] = "random"
    torch.manual_seed(0)
    return create_method("xcoop", tiny_clip, CLASSES, options).eval()


def _class_blocks(method) -> list[torch.Tensor]:
    """Each class's learned vectors, read from the parameter itself: rows of the class-specific
    (C, M, W) context, or the class's consecutive rows of the matched prompt's (sum_c M_c, W)."""
    ctx = method.prompt.ctx.detach()
    if ctx.dim() == 3:
        return [ctx[c] for c in range(ctx.shape[0])]
    blocks, start = [], 0
    for n in method.prompt.lengths:
        blocks.append(ctx[start:start + n])
        start += n
    assert start == ctx.shape[0]
    return blocks


@pytest.mark.parametrize("soft_prompt", ["paper", "matched"])
def test_report_tsne_and_textual_tokens_read_xcoops_context_vectors(tiny_clip, soft_prompt):
    from conceptclip.explain.textual import context_vectors, explain_prompt
    from conceptclip.prompts import encode_prompts
    from conceptclip.report.tsne import prompt_token_points

    method = _xcoop(tiny_clip, soft_prompt)
    expected = _class_blocks(method)
    found = context_vectors(method)
    assert len(found) == 1 and len(found[0]) == len(CLASSES)  # one prompt module, one block per class
    for got, want in zip(found[0], expected):
        assert torch.equal(got, want) and not got.requires_grad

    pts = prompt_token_points(method, CONCEPTS)
    assert pts is not None
    n = sum(len(b) for b in expected)
    assert pts.kinds == ["prompt"] * n + ["concept"] * len(CONCEPTS) + ["class"] * len(CLASSES)
    assert pts.labels[:n] == [f"{c}:ctx{m + 1}" for c, b in zip(CLASSES, expected) for m in range(len(b))]
    assert pts.labels[n:] == CONCEPTS + CLASSES
    assert pts.coords.shape == (n + len(CONCEPTS) + len(CLASSES), 2) and np.isfinite(pts.coords).all()

    # the textual explanation lists, per class context, each vector's 3 nearest vocabulary tokens:
    # brute-force Euclidean distances to every row of the token-embedding table
    table = tiny_clip.token_embedding.weight.detach().float()
    explanation = explain_prompt(method, encode_prompts(tiny_clip, CONCEPTS), CONCEPTS, k_tokens=3)
    assert len(explanation.context_tokens) == len(CLASSES)
    for block, rows in zip(expected, explanation.context_tokens):
        assert len(rows) == len(block)
        for v, row in zip(block.float(), rows):
            dist = sorted(float(((table[i] - v) ** 2).sum().sqrt()) for i in range(table.shape[0]))[:3]
            np.testing.assert_allclose([d for _, d in row], dist, rtol=1e-5, atol=1e-5)
