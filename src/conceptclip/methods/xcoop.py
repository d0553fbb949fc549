"""XCoOp: concept-guided context optimisation (Bie, Luo, Chen, Chen, "XCoOp: Explainable Prompt
Learning for Computer-Aided Diagnosis via Concept-guided Context Optimization", IJCAI 2024).
Official code: github.com/Tommy-Bie/XCoOp (prompting/xcoop.py, prompting/losses.py), used where the
paper is silent; docs/xcoop.md has the fidelity table (paper / code / ours for every item).

- Clinical prompt Q_d per class from concepts (Sec. 2.1; the paper's example: "a photo of melanoma,
  with irregular pigment network, ..., and vascular structures.").
- Soft prompt V_d per class, initialised from "a photo of a [disease name]" (Sec. 2), 4 context
  tokens (Fig. 4), class-specific (V in R^{D x c x dim}).
- Token-level alignment (Eqs. 1-2) over token-embedding sequences paired position by position:
      P(y_d | V_d) = exp(cos(Q_d, V_d) / tau) / sum_k exp(cos(Q_k, V_d) / tau),  L_T = -log P(y_d | V_d),
  cos of two token sequences = sum over positions of the per-token cosines (official code), mean over d.
- Prompt-level alignment (Eq. 3), text features g(.), summed over classes d:
      L_P = sum_d CE(softmax_k(cos(g(Q_k), g(V_d)) / tau), y_d);   L_PPA = (L_T + L_P) / 2.
- Global-local image-prompt alignment (Eq. 4), global feature p, patches f_1..f_M, one CE:
      z_d = s [cos(p, g(V_d)) + lambda (1/M) sum_m cos(f_m, g(V_d))],  L_IPA = CE(z, y)
  (s: the backbone's logit scale, as the official code); prediction softmax(z) (Sec. 2.3).
- L = L_PPA + lambda' L_IPA (Sec. 2.3); tau = 0.9, lambda = 0.1 (Sec. 3.1); lambda' = 1 (ours).

Named options keep our earlier reading (V1_OPTIONS): a soft prompt as long as the clinical prompt
(soft_prompt="matched"), squared-distance L_T, mean L_P, two CEs for L_IPA, global-only inference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from conceptclip.errors import ConfigError
from conceptclip.knowledge.clinical import (  # noqa: F401 - XCoOp's knowledge, importable from here as before
    IRRELEVANT_CONCEPTS, MODALITY_TEMPLATE, PAPER_TEMPLATE, Knowledge, fill_clinical, irrelevant_prompts,
    resolve_knowledge,
)
from conceptclip.methods import register_method
from conceptclip.methods.base import Method, MethodConfig, option, upgrade_saved_config
from conceptclip.methods.concept_family import ConceptDistanceExplanations
from conceptclip.prompts import ContextPrompt, normalize
from conceptclip.prompts.concept_context import (
    MatchedContextPrompt, pad_token_id, reference_prompts, special_token_ids,
)
from conceptclip.prompts.logits import global_similarity, local_similarity

CHOICES = {"knowledge": ("clinical", "random", "irrelevant"), "local_pool": ("mean", "max"),
           "soft_prompt": ("paper", "matched"), "token_loss": ("contrastive", "squared"),
           "prompt_reduction": ("sum", "mean"), "ipa": ("paper", "two_ce"), "inference": ("global_local", "global"),
           "clinical_template": ("paper", "modality")}


@dataclass
class XCoOpConfig(MethodConfig):
    error_prefix = "xcoop "

    bank: str = option("", "a shared-bank name or bank JSON file; '' = the bank registered for these classes, else "
                           "required", "ours")
    class_map: dict[str, str] = option(help="dataset class -> bank class", source="ours", factory=dict)
    concept_prompts: dict[str, str] = option(help="class -> clinical prompt (beats `bank`)", source="ours",
                                             factory=dict)
    clinical_template: str = option("paper", "paper: PAPER_TEMPLATE (Sec. 2.1 example) | modality: MODALITY_TEMPLATE "
                                             "(needs `modality`)")
    modality: str = option("", "e.g. 'dermoscopy', for clinical_template=modality and a {modality} concept_template",
                           "ours")
    top_k: int = option(0, "at most this many concepts per class (0: all)", "ours")
    min_frequency: float = option(0.0, "keep bank concepts present in at least this fraction of the class", "ours")
    knowledge: str = option("clinical", "clinical | random | irrelevant (knowledge intervention)")
    knowledge_seed: int = option(0, "seed of the random / irrelevant knowledge", "ours")
    soft_prompt: str = option("paper", "paper: class-specific '[V]_1..[V]_n [CLASS].' (Sec. 2) | matched: one [V] "
                                       "per clinical token (ours)")
    ctx_init: str = option("a photo of a", "words (n = their tokens, Sec. 2) | random: N(0, init_std^2) | concepts "
                                           "(matched only)")
    n_ctx: int = option(4, "context tokens of ctx_init=random with soft_prompt=paper (Fig. 4)")
    init_std: float = option(0.02, "std of a random context initialisation", "code: KaiyangZhou/CoOp trainers/coop.py")
    token_alignment: bool = option(True, "L_T, Eqs. 1-2")
    token_loss: str = option("contrastive", "contrastive: Eqs. 1-2 (per-token cosines summed, official code) | "
                                            "squared: mean ||v - q||^2 of the soft tokens (ours)")
    prompt_alignment: bool = option(True, "L_P, Eq. 3")
    prompt_reduction: str = option("sum", "sum over classes (Eq. 3) | mean")
    local_alignment: bool = option(True, "the local term of Eq. 4")
    ipa: str = option("paper", "paper: one CE of Eq. 4 | two_ce: CE(global) + lam * CE(local) (ours)")
    inference: str = option("global_local", "global_local: the score of Eq. 4 (Sec. 2.3) | global: s cos(p, g(V_d))")
    weight_token: float = option(0.5, "weight of L_T: L_PPA = (L_T + L_P) / 2")
    weight_prompt: float = option(0.5, "weight of L_P: L_PPA = (L_T + L_P) / 2")
    weight_ipa: float = option(1.0, "lambda' of L = L_PPA + lambda' L_IPA (the paper gives no value)", "ours")
    tau: float = option(0.9, "temperature of Eqs. 1 and 3 (Sec. 3.1)")
    lam: float = option(0.1, "lambda: weight of the local (patch) score in Eq. 4 (Sec. 3.1)")
    local_pool: str = option("mean", "mean over patches (Eq. 4) | max (ours)")
    concept_template: str = option("a photo with {concept}.", "concept prompts of the textual explanation", "ours")

    def validate(self) -> None:
        super().validate()
        for name, options in CHOICES.items():
            self.expect_choice(name, options)
        self.expect(self.tau > 0, "tau", "a positive temperature")
        for name in ("lam", "weight_token", "weight_prompt", "weight_ipa"):
            self.expect(getattr(self, name) >= 0, name, "a non-negative weight")
        if self.top_k < 0 or self.n_ctx < 1:
            raise ConfigError(f"xcoop top_k={self.top_k}, n_ctx={self.n_ctx}: expected top_k >= 0 and n_ctx >= 1")
        if self.soft_prompt == "matched" and self.ctx_init not in ("random", "concepts"):
            raise ConfigError(f"xcoop ctx_init={self.ctx_init!r} with soft_prompt='matched': expected ctx_init=random "
                              "or ctx_init=concepts (words initialise only the paper prompt)")
        if self.modality and self.clinical_template != "modality" and "{modality}" not in self.concept_template:
            raise ConfigError(f"xcoop modality={self.modality!r} is used only by clinical_template=modality (v1's 'a "
                              "{modality} image of [class], which has ...'); the paper's prompt is 'a photo of [class], "
                              "with ...': drop modality or set clinical_template=modality")


# Our earlier defaults (before the paper-faithful ones): every option that differs.
V1_OPTIONS: dict[str, Any] = {
    "bank": "ph2", "clinical_template": "modality", "modality": "dermoscopy", "soft_prompt": "matched",
    "ctx_init": "random", "token_loss": "squared", "prompt_reduction": "mean", "ipa": "two_ce", "inference": "global",
    "weight_token": 1.0, "weight_prompt": 1.0, "concept_template": "a {modality} image with {concept}."}
NEW_FIELDS = frozenset({"clinical_template", "soft_prompt", "n_ctx", "token_loss", "prompt_reduction", "ipa",
                        "inference", "weight_ipa"})


def upgrade_config(values: dict[str, Any]) -> dict[str, Any]:
    """A config saved before the paper-faithful defaults runs as it was trained (V1_OPTIONS)."""
    return upgrade_saved_config(values, XCoOpConfig, NEW_FIELDS, V1_OPTIONS)


# -- the paper's terms, pure functions -------------------------------------------------
def token_contrastive_loss(soft: torch.Tensor, clinical: torch.Tensor, tau: float = 0.9) -> torch.Tensor:
    """L_T (Eqs. 1-2) for token sequences soft V (D, L, W) and clinical Q (D, L, W) paired by position:
    cos(Q_k, V_d) = sum_l cos(q_kl, v_dl); -log softmax_k(cos(Q_k, V_d) / tau)[d], mean over d."""
    sim = torch.einsum("dlw,klw->dk", normalize(soft), normalize(clinical.to(soft.dtype))) / tau
    return F.cross_entropy(sim, torch.arange(sim.shape[0], device=sim.device))


def token_distance_loss(context: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Option token_loss="squared": mean over the soft tokens of ||v - q||_2^2, q the clinical token
    embedding at the same position; both (N, W)."""
    return (context - targets.to(context.dtype)).pow(2).sum(-1).mean()


def prompt_alignment_loss(soft: torch.Tensor, hard: torch.Tensor, tau: float = 0.9,
                          reduction: str = "sum") -> torch.Tensor:
    """L_P (Eq. 3): sum_d -log softmax_k(cos(g(Q_k), g(V_d)) / tau)[d] for learned (D, E) and
    clinical (D, E) prompt features (reduction "mean": divided by D)."""
    sim = normalize(soft) @ normalize(hard.to(soft.dtype)).t() / tau
    return F.cross_entropy(sim, torch.arange(sim.shape[0], device=sim.device), reduction=reduction)


def ipa_logits(features: torch.Tensor, patches: torch.Tensor | None, text: torch.Tensor,
               scale: torch.Tensor | float, lam: float = 0.1, pool: str = "mean") -> torch.Tensor:
    """The score of Eq. 4: s [cos(p, g(V_d)) + lam (1/M) sum_m cos(f_m, g(V_d))] -> (B, D)."""
    score = global_similarity(features, text)
    if lam:
        score = score + lam * local_similarity(patches, text, pool)
    return scale * score


# -- the method ---------------------------------------------------------------------------
@register_method("xcoop")
class XCoOp(ConceptDistanceExplanations, Method):
    Config = XCoOpConfig
    inputs = frozenset({"features", "patches"})
    # Sec. 3.1: SGD lr 0.032, warm-up and cosine; epochs, warm-up and batch: the official config
    # (configs/XCoOp/vit_b16_c4_batch32_pneumonia.yaml: 120 epochs, 5 constant warm-up epochs at 1e-5, batch 32),
    # gradient norm clipped at 1 (prompting/xcoop.py, its "amp" precision path)
    train_defaults = {"optimizer": "sgd", "lr": 0.032, "batch_size": 32, "epochs": 120, "warmup_epochs": 5,
                      "warmup_lr": 1e-5, "max_grad_norm": 1.0}

    def __init__(self, backbone, classnames, config=None, **kw) -> None:
        if isinstance(config, dict):
            config = upgrade_config(config)
        super().__init__(backbone, classnames, config, **kw)
        c = self.config
        self.knowledge = resolve_knowledge(c, self.classnames, self.context.get("knowledge_exclude"))
        # every clinical concept of every class, in first-appearance order (names of `concept_scores`)
        self.concept_names = list(dict.fromkeys(p for n in self.classnames for p in self.knowledge.concepts[n]))
        texts = self.knowledge.clinical_prompts
        if c.knowledge == "irrelevant":
            texts = irrelevant_prompts(self.knowledge, c)
        ref = reference_prompts(backbone, [texts[n] for n in self.classnames])
        if c.knowledge == "random":
            ref = ref.randomized(backbone.token_embedding.num_embeddings, special_token_ids(backbone), c.knowledge_seed)
        self.reference = ref
        if c.soft_prompt == "paper":
            words = None if c.ctx_init in ("random", "concepts") else c.ctx_init
            self.prompt = ContextPrompt(backbone, self.classnames, n_ctx=c.n_ctx, class_specific=True,
                                        ctx_init=words, init_std=c.init_std)
            n = self.prompt.n_ctx
            rows = torch.arange(len(self.classnames)).repeat_interleave(n)
            cols = self.prompt.ctx_positions.reshape(-1)
        else:
            self.prompt = MatchedContextPrompt(backbone, self.classnames, ref.lengths, init_std=c.init_std)
            rows, cols = self.prompt.ctx_rows, self.prompt.ctx_cols
        # Q and V of Eqs. 1-2 share one length L: the shorter is padded with the tokenizer's pad token
        ids, soft_len = ref.tokens.input_ids, self.prompt.token_embeds.shape[1]
        length = max(ids.shape[1], soft_len)
        pad = pad_token_id(backbone)
        ids = torch.cat([ids, torch.full((ids.shape[0], length - ids.shape[1]), pad, dtype=ids.dtype)], 1)
        with torch.no_grad():
            table = backbone.token_embedding
            clinical = table(ids.to(backbone.device)).detach().float().cpu()
            soft_pad = table(torch.full((1, length - soft_len), pad, device=backbone.device)).detach().float().cpu()
        # fixed, recomputed, never checkpointed: the clinical token ids/embeddings (C, L)/(C, L, W), the
        # clinical token at each soft token's position (N, W), the pad of the soft sequence, g(Q) (C, E)
        self.register_buffer("clinical_ids", ids, persistent=False)
        self.register_buffer("clinical_tokens", clinical, persistent=False)
        self.register_buffer("soft_rows", rows.clone(), persistent=False)
        self.register_buffer("soft_cols", cols.clone(), persistent=False)
        self.register_buffer("token_targets", clinical[rows, cols], persistent=False)
        self.register_buffer("soft_pad", soft_pad.expand(len(self.classnames), -1, -1).clone(), persistent=False)
        self.register_buffer("hard_features", normalize(ref.features(backbone)), persistent=False)
        if c.ctx_init == "concepts":  # start on the clinical tokens at the soft tokens' positions
            with torch.no_grad():
                self.prompt.ctx.copy_(self.token_targets.reshape(self.prompt.ctx.shape))

    # -- prediction ---------------------------------------------------------------------
    def text_features(self) -> torch.Tensor:
        """L2-normalised learned class prompt features g(V_d) (C, E)."""
        return normalize(self.prompt())

    def soft_tokens(self) -> torch.Tensor:
        """The learned soft tokens (N, W), class by class, each paired with `token_targets[i]`."""
        return self.prompt.ctx.reshape(-1, self.prompt.ctx.shape[-1])

    def _patches(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if batch.get("patches") is None:
            raise ConfigError("xcoop's local score (Eq. 4) needs patch tokens in the batch ('patches'); use a backbone "
                              "with patch tokens or set local_alignment=false (and inference=global)")
        return batch["patches"]

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        c, text = self.config, self.text_features()
        lam = c.lam if c.local_alignment and c.inference == "global_local" else 0.0
        patches = self._patches(batch) if lam else None
        return ipa_logits(batch["features"], patches, text, self.backbone.logit_scale.detach(), lam, c.local_pool)

    def loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """L = w_T L_T + w_P L_P + lambda' L_IPA and every term (switched-off terms reported, detached)."""
        c = self.config
        scale, text, labels = self.backbone.logit_scale.detach(), self.text_features(), batch["labels"]
        glob = global_similarity(batch["features"], text)
        ce = self.classification_loss(scale * glob, labels)
        terms: dict[str, torch.Tensor] = {"ce": ce.detach()}
        patches = self._patches(batch) if c.local_alignment else batch.get("patches")
        ipa = ce
        if patches is not None:
            with torch.set_grad_enabled(c.local_alignment and torch.is_grad_enabled()):
                loc = local_similarity(patches, text, c.local_pool)
                local = self.classification_loss(scale * loc, labels)
            terms["local"] = local.detach()
            if c.local_alignment:
                ipa = (self.classification_loss(scale * (glob + c.lam * loc), labels) if c.ipa == "paper"
                       else ce + c.lam * local)
        with torch.set_grad_enabled(c.token_alignment and torch.is_grad_enabled()):
            if c.token_loss == "contrastive":
                soft = torch.cat([self.prompt.embeds(), self.soft_pad.to(text.dtype)], 1)
                token = token_contrastive_loss(soft, self.clinical_tokens, c.tau)
            else:
                token = token_distance_loss(self.soft_tokens(), self.token_targets)
        with torch.set_grad_enabled(c.prompt_alignment and torch.is_grad_enabled()):
            prompt = prompt_alignment_loss(text, self.hard_features, c.tau, c.prompt_reduction)
        ppa = torch.zeros((), device=text.device)
        if c.token_alignment:
            ppa = ppa + c.weight_token * token
        if c.prompt_alignment:
            ppa = ppa + c.weight_prompt * prompt
        total = ppa + c.weight_ipa * ipa
        terms.update(ipa=ipa.detach(), token=token.detach(), prompt=prompt.detach(), ppa=ppa.detach())
        return {"loss": total, **terms}

    def describe(self) -> dict[str, Any]:
        tok = getattr(self.backbone, "tokenizer", None)
        reference = [t if t is not None else (tok.decode(ids.tolist()) if hasattr(tok, "decode") else ids.tolist())
                     for t, ids in zip(self.reference.texts, self.reference.content_ids())]
        return {**super().describe(), "knowledge_source": self.knowledge.source,
                "clinical_concepts": self.knowledge.concepts, "reference_prompts": reference,
                "soft_prompt_lengths": torch.bincount(self.soft_rows, minlength=len(self.classnames)).tolist()}


# XCoOp's explanations as data live in explain/ (below methods/); importable from here as before
from conceptclip.explain.prompt_tokens import (  # noqa: E402
    TextualExplanation, TokenTSNE, concept_class_agreement, explain_textually, home_classes, prompt_token_tsne,
    token_alignment_stats,
)
