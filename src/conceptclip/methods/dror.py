"""DROR-style baseline: doubly-right recognition with "why" prompts (Mao et al., "Doubly Right Object
Recognition: A Why Prompt for Visual Rationales", CVPR 2023), the method ECOR is compared with.

DROR scores every (category, rationale) prompt "This is a photo of a {c} because there is {r}."
directly, one softmax over all candidate pairs (ECOR's description of DROR, its ablation AB3),

    P(c, R | I) = exp(s · cos(f(I), g(c, R))) / sum_{(c', R')} exp(s · cos(f(I), g(c', R')))

and learns visual prompts (the "why prompt"; here the same `prompts.visual_prompts` module and the
same defaults as ECOR: every (c, R) pair, shallow prompt of 3 tokens, text encoder frozen) with
cross-entropy towards the true pairs (several true rationales: averaged). The most probable pair
gives the category and its rationale (top_k = 1, ours). Only the probability model differs from
ECOR's factorisation P(R | I) · P(c | R, I), so the comparison isolates it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from conceptclip.methods import register_method
from conceptclip.methods.base import option
from conceptclip.methods.rationale_family import RationaleConfig, RationaleMethod
from conceptclip.prompts.rationales import multi_positive_nll, positive_pairs


@dataclass
class DrorConfig(RationaleConfig):
    top_k: int = option(1, "pairs that vote: 1, the most probable pair decides", "ours")


@register_method("dror")
class DROR(RationaleMethod):
    Config = DrorConfig

    def log_joint(self, sims: dict[str, torch.Tensor]) -> torch.Tensor:
        """One softmax over all candidate (c, R) pairs, (B, P)."""
        return sims["pair_logits"].log_softmax(-1)

    def loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        sims = self.similarities(self.image_features(batch).global_)
        pos_sets = self.positive_sets(self.rationale_targets(batch))
        pos = positive_pairs(batch["labels"], pos_sets, self.pair_class, self.pair_set)
        ce = multi_positive_nll(self.log_joint(sims), pos)
        return {"loss": ce, "ce": ce.detach()}
