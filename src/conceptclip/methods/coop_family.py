"""The CoOp family's shared parts (not a method itself): the learned-context options every CoOp-style
method has, and the classifier they share.

CoOp (Zhou et al., IJCV 2022) learns the context of the prompt t_i = [V]_1 ... [V]_M [CLASS_i] (Eq. 2)
and scores p(y=i|x) = softmax_i(cos(g(t_i), f(x)) / tau) (Eq. 3). CoCoOp, KgCoOp, ProGrad and
BiomedCoOp keep this prompt and classifier and add their own terms: their configs inherit
`ContextConfig` (overriding the defaults their papers change), their methods `ContextMethod`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from conceptclip.methods.base import Method, MethodConfig, option
from conceptclip.prompts import ContextPrompt, normalize
from conceptclip.prompts.context import POSITIONS
from conceptclip.prompts.logits import clip_logits

COOP_CODE = "code: KaiyangZhou/CoOp trainers/coop.py"


@dataclass
class ContextConfig(MethodConfig):
    """The learned context [V]_1 ... [V]_M of a CoOp-style prompt (defaults: CoOp's)."""

    n_ctx: int = option(16, "context tokens M (used when ctx_init is empty; CoOp Sec. 4.1: 16)", "paper: CoOp")
    ctx_init: str = option("", "words whose token embeddings start the context (M = their tokens), e.g. 'a photo "
                               "of a'; empty: M random vectors N(0, init_std^2)")
    class_token_position: str = option("end", "where [CLASS] stands among the context tokens: end | middle | front",
                                       "paper: CoOp")
    class_specific: bool = option(False, "CSC: one context per class instead of one shared by all classes",
                                  "paper: CoOp")
    init_std: float = option(0.02, "std of the random context initialisation", COOP_CODE)

    def validate(self) -> None:
        super().validate()
        self.expect(self.ctx_init is None or isinstance(self.ctx_init, str), "ctx_init",
                    "text (empty: random context vectors)")
        self.expect(bool(self.ctx_init) or self.n_ctx >= 1, "n_ctx", "a positive number of context tokens")
        self.expect_choice("class_token_position", POSITIONS)
        self.expect(self.init_std >= 0, "init_std", "a non-negative standard deviation")


@dataclass
class PhraseContextConfig(ContextConfig):
    """M = 4 context tokens started from "a photo of a": CoCoOp's choice (Sec. 4), kept by KgCoOp, ProGrad
    and BiomedCoOp (its official few-shot configs)."""

    n_ctx: int = option(4, "context tokens M (used when ctx_init is empty)", "paper: CoCoOp Sec. 4")
    ctx_init: str = option("a photo of a", "words whose token embeddings start the context (M = their tokens); "
                                           "empty: n_ctx random vectors N(0, init_std^2)", "paper: CoCoOp Sec. 4")


class ContextMethod(Method):
    """A learned-context prompt over the classes (`ContextPrompt`) scored by CLIP's scaled cosine (Eq. 3)
    against the frozen image features (cached features suffice)."""

    Config = ContextConfig

    def __init__(self, backbone, classnames, config=None, **kw) -> None:
        super().__init__(backbone, classnames, config, **kw)
        self.prompt = ContextPrompt.from_config(backbone, self.classnames, self.config)

    def text_features(self) -> torch.Tensor:
        """L2-normalised class features g(t_i) (C, D)."""
        return normalize(self.prompt())

    def class_logits(self, text: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """s cos(f(x), g(t_i)) (B, C) for class features `text` (Eq. 3 before the softmax)."""
        return clip_logits(batch["features"], text, self.backbone.logit_scale.detach())

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.class_logits(self.text_features(), batch)  # text once per step for all classes
