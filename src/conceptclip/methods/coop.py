"""CoOp: context optimisation (Zhou et al., "Learning to Prompt for Vision-Language Models", IJCV 2022).

Prompt t_i = [V]_1 ... [V]_M [CLASS_i] (Eq. 2), p(y=i|x) = softmax_i(cos(g(t_i), f(x)) / tau) (Eq. 3),
trained with cross-entropy; only the context vectors [V] learn. The frozen image tower lets the
engine serve cached image features. The prompt, its options and the classifier are the CoOp
family's (`methods.coop_family`, mechanics in `prompts.ContextPrompt`); this file adds the schedule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from conceptclip.methods import register_method
from conceptclip.methods.coop_family import ContextConfig, ContextMethod


@dataclass
class CoOpConfig(ContextConfig):
    """CoOp's defaults: 16 random context tokens shared by all classes, [CLASS] at the end (Sec. 4.1)."""


@register_method("coop")
class CoOp(ContextMethod):
    Config = CoOpConfig
    # CoOp paper: SGD lr 0.002, batch 32, cosine, 1 warm-up epoch at 1e-5. KgCoOp, ProGrad and DEAL reuse
    # this dict (epochs 50); CoOp's own epochs depend on K (`train_defaults_for`).
    train_defaults = {"optimizer": "sgd", "lr": 0.002, "batch_size": 32, "epochs": 50, "warmup_epochs": 1,
                      "warmup_lr": 1e-5}

    @classmethod
    def train_defaults_for(cls, shots: int | None = None) -> dict[str, Any]:
        """Epochs by shots (CoOp paper, Sec. 4.1; official configs vit_b16_ep50 / ep100 / ep200 and
        scripts/main.sh): 50 at 1-2 shots, 100 at 4-8, 200 at 16. Ours where neither says: 100 at 3,
        200 above 16 shots and on splits that are not K-shot (`shots` None)."""
        epochs = 200 if shots is None or shots > 8 else 100 if shots > 2 else 50
        return {**cls.train_defaults, "epochs": epochs}
