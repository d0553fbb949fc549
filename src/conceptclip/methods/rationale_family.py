"""The rationale family's shared parts (not a method itself): ECOR and its DROR baseline both score
candidate (category, rationale set) pairs through a learned visual prompt against frozen prompt features.

`RationaleConfig` holds their common options (bank, pairs, templates, visual prompt, decision) and
validates itself; `RationaleMethod` builds the rationale space (`prompts.rationales`), encodes the
rationale prompts "There are {r1} and ... in the photo." and the conditional prompts "This is a photo of
a {c} because there is {r}." once, and gives the scaled-cosine logits, the decision (top-k voting, Eq. 11
of ECOR, or the marginal), the rationale truth and the explanations. Subclasses add their probability
model (`log_joint`) and `loss`: ECOR's P(R | I) P(c | R, I) in methods/ecor.py, DROR's one softmax over
the pairs in methods/dror.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from conceptclip.errors import ConfigError
from conceptclip.explain.similarity import similarity_maps
from conceptclip.knowledge.templates import ECOR_CATEGORY, ECOR_RATIONALE
from conceptclip.methods.base import Method, MethodConfig, option
from conceptclip.metrics.rationale import CLASS_LEVEL_NOTE
from conceptclip.prompts import normalize
from conceptclip.prompts.logits import clip_logits
from conceptclip.prompts.rationales import (Decision, SampleTruth, build_rationale_space, checked_template,
                                            load_bank_spec, marginal_decision, positive_sets, rationale_targets,
                                            sample_truth, top_k_vote)
from conceptclip.prompts.text_features import encode_prompts
from conceptclip.prompts.visual_prompts import build_visual_prompt


@dataclass
class RationaleConfig(MethodConfig):
    """Options ECOR and DROR share; defaults: ECOR's paper (DROR is compared under the same ones)."""

    bank: str = option("", "required: a rationale bank JSON file or a shared-bank name ('dror/cifar10'; 'ph2' for "
                           "PH2 only)", "ours")
    class_map: dict = option(help="{class: bank class} where names differ", source="ours", factory=dict)
    rationale_sets: str = option("single", "single: every rationale alone (the paper's data: one per image) | class: "
                                           "each class's bank list as one set")
    pairs: str = option("all", "all: every (c, R) combination (Eq. 5) | bank: R among c's rationales (ours)")
    max_rationales: int = option(0, "rationales per class, in bank order (0 = all)", "ours")
    rationale_field: str = option("phrase", "phrase | rationale (a concept's rationale text, e.g. DROR's ImageNet "
                                            "graphs)", "ours")
    rationale_template: str = option(ECOR_RATIONALE.text, "Prompt_R (Sec. III-C.1)")
    category_template: str = option(ECOR_CATEGORY.text, "Prompt_{c|R} (Sec. III-C.1)")
    visual_prompt: str = option("shallow", "shallow: Eq. 6, Table I | deep: Eqs. 7-8 | pixel | none | auto: deep on "
                                           "a ViT")
    n_prompt_tokens: int = option(3, "K of Eq. 6 (Table I: 3 on CIFAR, Food-101, Caltech-101)")
    prompt_last_blocks: int = option(0, "conv feature prompt: before the last N MBConv blocks (0: at the head conv)",
                                     "ours")
    prompt_pad: int = option(0, "pixel prompt frame width (0 = 30 px at 224 px)", "ours")
    top_k: int = option(5, "pairs that vote (Sec. IV-A.2: 'the top 5 selections')")
    decision: str = option("vote", "vote: top-k max voting (Eq. 11) | marginal (ours)")
    rationale_truth: str = option("image", "image: per-image annotations where given | class: the true class's bank "
                                           "list", "ours")

    def validate(self) -> None:
        super().validate()
        self.expect_choice("decision", ("vote", "marginal"))
        self.expect_choice("rationale_truth", ("image", "class"))
        self.expect(self.top_k >= 1, "top_k", "a positive integer")


class RationaleMethod(Method):
    """Candidate (category, rationale set) pairs scored through visual prompts and frozen prompt
    features; subclasses define the joint `log_joint` and the `loss`."""

    Config = RationaleConfig
    inputs = frozenset({"pixels"})
    # ours (the paper gives no optimiser): AdamW on the prompt only; lr chosen on PH2's validation pool
    train_defaults = {"optimizer": "adamw", "lr": 0.3, "weight_decay": 0.0, "batch_size": 32, "epochs": 20,
                      "warmup_epochs": 0}

    def __init__(self, backbone, classnames, config=None, *, bank=None, **kw) -> None:
        super().__init__(backbone, classnames, config, **kw)
        c = self.config
        bank = bank if bank is not None else load_bank_spec(c.bank, self.context.get("knowledge_exclude"),
                                                            type(self).__name__.lower())
        self.bank_name = bank.name
        self.space = build_rationale_space(bank, self.classnames, class_map=c.class_map, sets=c.rationale_sets,
                                           pairs=c.pairs, max_per_class=c.max_rationales,
                                           field=c.rationale_field)
        self.visual = build_visual_prompt(backbone, c.visual_prompt, n_tokens=c.n_prompt_tokens,
                                          last_blocks=c.prompt_last_blocks, pad=c.prompt_pad or None)
        self.inputs = self.visual.inputs
        r_tmpl = checked_template("rationale_template", c.rationale_template, {"rationales"})
        c_tmpl = checked_template("category_template", c.category_template, {"classname", "rationale"})
        self.rationale_texts = self.space.rationale_prompts(r_tmpl)
        self.pair_texts, index = self.space.pair_prompts(c_tmpl)
        self.register_buffer("pair_class", index[:, 0].clone(), persistent=False)
        self.register_buffer("pair_set", index[:, 1].clone(), persistent=False)
        self.register_buffer("rationale_text", encode_prompts(backbone, self.rationale_texts), persistent=False)
        self.register_buffer("pair_text", encode_prompts(backbone, self.pair_texts), persistent=False)
        self.register_buffer("set_matrix", self.space.set_matrix, persistent=False)
        self.register_buffer("class_truth", self.space.class_truth, persistent=False)
        table = sample_truth(self.space, self.context.get("dataset")) if c.rationale_truth == "image" else None
        self.register_buffer("sample_truth", table.truth if table else None, persistent=False)
        self.register_buffer("sample_annotated", table.annotated if table else None, persistent=False)
        self.truth_source = table.source if table else (
            "class: the bank's rationales of the true class" if c.rationale_truth == "class" else
            "image where batches carry 'rationales', else class (no dataset with per-image rationale annotations "
            "was given)")

    # -- scores -------------------------------------------------------------------------
    def image_features(self, batch: dict[str, torch.Tensor], patches: bool = False):
        return self.visual.encode(batch, patches=patches)

    def _scale(self) -> torch.Tensor:
        return self.backbone.logit_scale.detach()

    def similarities(self, f: torch.Tensor) -> dict[str, torch.Tensor]:
        """Scaled cosine logits of the image features (B, D): rationale (B, S) and pair (B, P)."""
        x, s = normalize(f.to(self.pair_text.dtype)), self._scale()
        return {"rationale_logits": clip_logits(x, self.rationale_text, s, normalized=True),
                "pair_logits": clip_logits(x, self.pair_text, s, normalized=True)}

    def log_joint(self, sims: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def decide(self, log_joint: torch.Tensor) -> Decision:
        n = len(self.classnames)
        if self.config.decision == "marginal":
            return marginal_decision(log_joint, self.pair_class, n)
        return top_k_vote(log_joint, self.pair_class, n, self.config.top_k)

    def forward_all(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        sims = self.similarities(self.image_features(batch).global_)
        lj = self.log_joint(sims)
        return {**sims, "log_joint": lj, "decision": self.decide(lj)}

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Class logits whose argmax is the joint decision: log of the vote scores (votes + best/2),
        or the log marginal with decision="marginal"."""
        d = self.forward_all(batch)["decision"]
        return d.scores if self.config.decision == "marginal" else d.scores.clamp_min(1e-12).log()

    # -- truth --------------------------------------------------------------------------
    def rationale_targets(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, V) true rationales (`prompts.rationales.rationale_targets`): the batch's "rationales",
        else the given dataset's annotations by "sample" row, else the true class's bank list."""
        table = None if self.sample_truth is None else SampleTruth(self.sample_truth, self.sample_annotated, "")
        return rationale_targets(batch, self.class_truth, table, self.config.rationale_truth == "image")

    def positive_sets(self, truth: torch.Tensor) -> torch.Tensor:
        return positive_sets(self.set_matrix, truth)

    # -- explanations -------------------------------------------------------------------
    @torch.no_grad()
    def predict_rationales(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The category (B,), the rationale set that supports it (its best pair's set, (B,)), that set
        as a multi-hot over the vocabulary (B, V), P(R | I) and the joint."""
        out = self.forward_all(batch)
        d: Decision = out["decision"]
        sets = self.pair_set[d.pair]
        return {"pred": d.pred, "rationale_set": sets, "rationales": self.set_matrix[sets].float(),
                "log_joint": out["log_joint"], "votes": d.votes,
                "rationale_probs": out["rationale_logits"].softmax(-1)}

    @torch.no_grad()
    def concept_scores(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """P(R | I) over the candidate rationale sets (B, S)."""
        return self.similarities(self.image_features(batch).global_)["rationale_logits"].softmax(-1)

    @torch.no_grad()
    def rationale_maps(self, batch: dict[str, torch.Tensor], sets: torch.Tensor | None = None) -> torch.Tensor:
        """Cosine similarity of every (prompted) patch token with each rationale prompt, (B, S, h, w);
        with `sets` (B,), the map of one set per image, (B, h, w)."""
        feats = self.image_features(batch, patches=True)
        if feats.patches is None:
            raise ConfigError("rationale_maps: this backbone returned no patch tokens")
        maps = similarity_maps(feats, self.rationale_text.to(feats.patches.dtype))
        if sets is None:
            return maps
        return maps[torch.arange(maps.shape[0], device=maps.device), sets.to(maps.device)]

    def explain(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        out = self.predict_rationales(batch)
        if "pixels" in batch or self.visual.kind != "none":
            try:
                out["rationale_map"] = self.rationale_maps(batch, out["rationale_set"])
            except ConfigError:
                pass
        out["rationale_phrases"] = [self.space.set_phrases(int(s)) for s in out["rationale_set"]]
        return out

    def describe(self) -> dict[str, Any]:
        out = {**super().describe(), "rationale_space": self.space.summary(), "visual_prompt_kind": self.visual.kind,
               "rationale_truth_source": self.truth_source}
        if self.sample_truth is None:  # unless batches carry "rationales": the grid has no rationale information
            out["rationale_grid_note"] = "unless batches carry per-image 'rationales': " + CLASS_LEVEL_NOTE
        return out
