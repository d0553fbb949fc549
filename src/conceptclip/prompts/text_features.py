"""Fixed text features of hand-written prompts, computed once (no gradient) and reused every step."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from conceptclip.backbones.base import Backbone


@torch.no_grad()
def encode_prompts(backbone: Backbone, texts: Sequence[str], batch_size: int = 256,
                   desc: str | None = None) -> torch.Tensor:
    """L2-normalised text features (T, D) of `texts`, encoded in batches without gradients (with a
    progress bar over the batches when `desc` is given)."""
    from conceptclip.progress import progress

    starts = progress(range(0, len(texts), batch_size), enabled=desc is not None, desc=desc, unit="batch", leave=False)
    out = [backbone.encode_texts(list(texts[i:i + batch_size])) for i in starts]
    return F.normalize(torch.cat(out).float(), dim=-1)


@torch.no_grad()
def class_text_features(backbone: Backbone, classnames: Sequence[str],
                        templates: Sequence[str] | dict[str, Sequence[str]]) -> torch.Tensor:
    """Per-class prompt-ensemble features (C, D): mean of the normalised features of each class's
    prompts, re-normalised (CLIP's prompt ensembling). `templates` is a list of "{}" templates shared
    by all classes, or a dict class -> list of full prompts (e.g. LLM ensembles)."""
    feats = []
    for c in classnames:
        prompts = list(templates[c]) if isinstance(templates, dict) else [t.format(c) for t in templates]
        feats.append(F.normalize(encode_prompts(backbone, prompts).mean(0), dim=-1))
    return torch.stack(feats)
