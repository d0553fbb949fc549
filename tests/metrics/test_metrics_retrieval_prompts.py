"""precision@K / recall@K, prompt-concept distance and nearest vocabulary tokens."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics.pairwise import cosine_distances
from sklearn.neighbors import NearestNeighbors

from conceptclip.errors import ConfigError
from conceptclip.metrics import (
    nearest_vocab_tokens,
    precision_at_k,
    prompt_concept_distance,
    recall_at_k,
    relevance_from_labels,
)

SIM = torch.tensor(
    [
        [0.9, 0.1, 0.8, 0.3, 0.5],  # ranking 0, 2, 4, 3, 1
        [0.2, 0.7, 0.7, 0.1, 0.0],  # ranking 1, 2 (tie -> lower index first), 0, 3, 4
    ]
)
QUERY_LABELS = torch.tensor([0, 1])
GALLERY_LABELS = torch.tensor([0, 2, 1, 0, 2])  # q0 relevant {0, 3}; q1 relevant {2}


def test_relevance_from_labels_single_and_multi():
    rel = relevance_from_labels(QUERY_LABELS, GALLERY_LABELS)
    assert rel.tolist() == [[True, False, False, True, False], [False, False, True, False, False]]
    q = np.array([[1, 0, 0], [0, 1, 1]])
    g = np.array([[1, 0, 0], [0, 0, 0], [0, 1, 0], [1, 0, 1], [0, 0, 0]])
    # q0 shares label 0 with items 0, 3 ; q1 shares label 1 with item 2 and label 2 with item 3
    assert relevance_from_labels(q, g).tolist() == [[True, False, False, True, False], [False, False, True, True, False]]


def test_precision_recall_at_k_hand():
    rel = relevance_from_labels(QUERY_LABELS, GALLERY_LABELS)
    # q0 top-1 {0}: 1 relevant ; top-2 {0,2}: 1 ; top-4 {0,2,4,3}: 2
    # q1 top-1 {1}: 0 ; top-2 {1,2}: 1
    p = precision_at_k(SIM, rel, [1, 2, 4], reduction="none")
    assert p[1].tolist() == [1.0, 0.0]
    assert p[2].tolist() == [0.5, 0.5]
    assert p[4].tolist() == [0.5, 0.25]
    assert precision_at_k(SIM, rel, 1) == pytest.approx(0.5)
    # recall: q0 has 2 relevant, q1 has 1
    r = recall_at_k(SIM, rel, [1, 2], reduction="none")
    assert r[1].tolist() == [0.5, 0.0] and r[2].tolist() == [0.5, 1.0]
    assert recall_at_k(SIM, rel, 2) == pytest.approx(0.75)


def test_multi_label_relevance_and_query_without_relevant_items():
    rel = torch.tensor([[1, 0, 0, 1, 0], [0, 0, 1, 1, 0], [0, 0, 0, 0, 0]])
    sim = torch.cat([SIM, torch.rand(1, 5)])
    # q1 top-2 {1,2}: 1 of 2 relevant -> P@2 = 1/2, R@2 = 1/2 ; q2 has no relevant item: P = 0, R undefined
    assert precision_at_k(sim, rel, 2, reduction="none").tolist() == [0.5, 0.5, 0.0]
    r = recall_at_k(sim, rel, 2, reduction="none")
    assert r[:2].tolist() == [0.5, 0.5] and math.isnan(r[2])
    assert recall_at_k(sim, rel, 2) == pytest.approx(0.5)  # mean over the 2 defined queries


def test_precision_at_k_against_loop_reference():
    rng = np.random.default_rng(0)
    sim = rng.normal(size=(20, 30))
    rel = rng.random((20, 30)) < 0.2
    got = precision_at_k(sim, rel, [1, 5, 10], reduction="none")
    got_r = recall_at_k(sim, rel, 10, reduction="none")
    for q in range(20):
        order = sorted(range(30), key=lambda g: -sim[q, g])
        for k in (1, 5, 10):
            assert float(got[k][q]) == pytest.approx(sum(rel[q, g] for g in order[:k]) / k)
        if rel[q].any():
            assert float(got_r[q]) == pytest.approx(sum(rel[q, g] for g in order[:10]) / rel[q].sum())


def test_retrieval_bad_inputs():
    with pytest.raises(ConfigError, match="relevance"):
        precision_at_k(SIM, torch.ones(2, 4), 1)
    with pytest.raises(ConfigError, match="k"):
        precision_at_k(SIM, torch.ones(2, 5), 6)
    with pytest.raises(ConfigError, match="gallery_labels"):
        relevance_from_labels(torch.zeros(2, 3), torch.zeros(5, 4))


# ---------------------------------------------------------------- prompt-concept distance
def test_prompt_concept_distance_hand_and_sklearn():
    prompt = torch.tensor([1.0, 0.0])
    concepts = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [1.0, 1.0]])
    # cos = 1, 0, -1, 1/sqrt(2) -> distance 0, 1, 2, 1 - 1/sqrt(2) = .2929
    out = prompt_concept_distance(prompt, concepts)
    assert out.distance.tolist() == pytest.approx([0.0, 1.0, 2.0, 1 - 1 / math.sqrt(2)])
    assert out.ranking.tolist() == [0, 3, 1, 2]
    rng = np.random.default_rng(2)
    p, c = rng.normal(size=(3, 8)), rng.normal(size=(6, 8))
    assert np.allclose(prompt_concept_distance(p, c).distance.numpy(), cosine_distances(p, c))


def test_nearest_vocab_tokens_hand_and_sklearn():
    ctx = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    vocab = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0], [10.0, 10.0]])
    # v0: distances 1, 2, sqrt(18), sqrt(200) -> ids 0, 1
    # v1: sqrt(20), sqrt(13), 1, sqrt(85)     -> ids 2, 1
    out = nearest_vocab_tokens(ctx, vocab, k=2)
    assert out.token_ids.tolist() == [[0, 1], [2, 1]]
    assert out.distances[0].tolist() == pytest.approx([1.0, 2.0])
    assert out.distances[1].tolist() == pytest.approx([1.0, math.sqrt(13)])
    rng = np.random.default_rng(3)
    v, e = rng.normal(size=(4, 16)), rng.normal(size=(100, 16))
    ref_d, ref_i = NearestNeighbors(n_neighbors=3).fit(e).kneighbors(v)
    got = nearest_vocab_tokens(v, e, k=3)
    assert got.token_ids.tolist() == ref_i.tolist()
    assert np.allclose(got.distances.numpy(), ref_d)


def test_prompt_distance_bad_inputs():
    with pytest.raises(ConfigError, match="concept_embeddings"):
        prompt_concept_distance(torch.ones(4), torch.ones(3, 5))
    with pytest.raises(ConfigError, match="prompt_embedding"):
        prompt_concept_distance(torch.zeros(4), torch.ones(3, 4))
    with pytest.raises(ConfigError, match="k"):
        nearest_vocab_tokens(torch.ones(2, 4), torch.ones(3, 4), k=4)
