"""DEAL: disentangle and localise concept-level explanations (Li, Ma, Peng, ECCV 2024); fidelity table in
docs/deal.md. The text of class c is "An image of [CAT] with [C_1], ..., and [C_K]." (Sec. 3.2); each
concept also gets "An image of [CAT] with [C_k]." (Eq. 6, ranked explanations). g(x) is the Grad-CAM map
of s cos(f(I), x) for x the raw class name / raw concept phrase (paper, reference train.py), sum-normalised:

    L_contr = 1/N sum_i -log exp(v_i.t_i / tau) / sum_m exp(v_i.t_m / tau)      Eq. 2, in-batch pairs
    R_disen = - sum_k sum_{j != k} || g(C_k) - g(C_j) ||_1                       Eq. 3, ordered pairs
    R_local = || (1/K) sum_k g(C_k) - g([CAT]) ||_1                              Eq. 4
    Risk    = L_contr + lambda R_disen + gamma R_local                            Eq. 5

Grad-CAM is built with `create_graph=True`, so R_disen and R_local train (the reference code's maps carry
no gradient). Trained (the paper fine-tunes CLIP): the shared prompt context and a residual linear map
f'(v) = v + W v + b (zero at start) on the global feature and every patch token; with raw-text maps on a
frozen text tower the regularisers reach the image map only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from conceptclip.errors import ConfigError, PromptLengthError
from conceptclip.explain.cam import GradCAM, vit_reshape
from conceptclip.explain.similarity import similarity_maps
from conceptclip.explain.targets import ModelOutput
from conceptclip.knowledge.resolve import default_bank
from conceptclip.methods import register_method
from conceptclip.methods.base import Method, MethodConfig, option
from conceptclip.methods.concept_family import ConceptMaps, ConceptPromptExplanations
from conceptclip.methods.coop import CoOp
from conceptclip.prompts import ContextPrompt, normalize
from conceptclip.prompts.adapters import TokenAdapter
from conceptclip.prompts.concept_lists import ConceptLists, resolve_concepts
from conceptclip.prompts.logits import clip_logits

HEATMAPS = ("gradcam", "similarity")
MAP_NORMS = ("sum", "minmax")
CONTRASTIVE = ("infonce", "symmetric", "classes")
EXPLAIN_PROMPTS = ("raw", "template")
REDUCTIONS = ("sum", "mean")
DEAL_CODE = "code: tangli-udel/DEAL train.py"


@dataclass
class DEALConfig(MethodConfig):
    error_prefix = "deal "
    ctx_init: str = option("an image of", "the DEAL template's first words (Sec. 3.2), learnable; '' = n_ctx random "
                                          "vectors")
    n_ctx: int = option(3, "context tokens when ctx_init is empty", "ours")
    init_std: float = option(0.02, "std of a random context initialisation", "code: KaiyangZhou/CoOp trainers/coop.py")
    bank: str = option("", "shared-bank name ('deal/cub', 'ph2') or bank JSON; '' = the dataset's registered bank, "
                           "else required", "ours")
    class_map: dict[str, str] = option(help="dataset class -> bank class", source="ours", factory=dict)
    concepts: dict[str, list[str]] = option(help="class -> phrases; given lists beat the bank", source="ours",
                                            factory=dict)
    n_concepts: int = option(5, "concepts per class: the reference code's first five ([:5]); 0 = all", DEAL_CODE)
    lambda_disen: float = option(1.0, "lambda of Eq. 5 (the paper gives no value)", "ours")
    lambda_local: float = option(1.0, "gamma of Eq. 5 (the paper gives no value)", "ours")
    contrastive: str = option("infonce", "infonce: Eq. 2 in-batch | symmetric (reference train.py) | classes (CE over "
                                         "class prompts, ours)")
    explain_prompts: str = option("raw", "maps w.r.t. the raw class name / concept phrase (paper, reference train.py) "
                                         "| template (the prompts)")
    disen_reduction: str = option("sum", "sum over ordered pairs (Eq. 3) | mean (= lambda / (K (K - 1)) on Eq. 3)")
    heatmap: str = option("gradcam", "gradcam | similarity (ours)")
    map_norm: str = option("sum", "sum: relu(h) / sum relu(h) | minmax: (h - min) / (max - min)")
    image_adapter: bool = option(True, "train the residual linear map on the image embedding space", "ours")

    def validate(self) -> None:
        super().validate()
        for key, allowed in (("heatmap", HEATMAPS), ("map_norm", MAP_NORMS), ("contrastive", CONTRASTIVE),
                             ("explain_prompts", EXPLAIN_PROMPTS), ("disen_reduction", REDUCTIONS)):
            self.expect_choice(key, allowed)
        self.expect(self.lambda_disen >= 0, "lambda_disen", "a non-negative weight")
        self.expect(self.lambda_local >= 0, "lambda_local", "a non-negative weight")
        self.expect(self.n_concepts >= 0, "n_concepts", "a non-negative integer (0 = all)")


# ---- the two regularisers (pure functions on normalised maps) --------------------------------------

def normalize_heatmaps(maps: torch.Tensor, mode: str = "sum", eps: float = 1e-8) -> torch.Tensor:
    """Maps (..., h, w) -> comparable maps: "sum": p = relu(h) / (sum relu(h) + eps) (a distribution
    over positions); "minmax": (h - min) / (max - min + eps). Differentiable."""
    if mode not in MAP_NORMS:
        raise ConfigError(f"map_norm={mode!r}: expected one of {MAP_NORMS}")
    flat = maps.flatten(-2)
    if mode == "sum":
        r = flat.clamp_min(0)
        out = r / (r.sum(-1, keepdim=True) + eps)
    else:
        lo, hi = flat.amin(-1, keepdim=True), flat.amax(-1, keepdim=True)
        out = (flat - lo) / (hi - lo + eps)
    return out.reshape(maps.shape)


def _check_maps(maps: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if maps.dim() != 4:
        raise ConfigError(f"concept maps: expected (B, K, h, w), got {tuple(maps.shape)}")
    if mask is None:
        return torch.ones(maps.shape[:2], dtype=torch.bool, device=maps.device)
    if tuple(mask.shape) != tuple(maps.shape[:2]):
        raise ConfigError(f"concept mask: expected {tuple(maps.shape[:2])} (B, K), got {tuple(mask.shape)}")
    return mask.bool()


def disentangle_loss(maps: torch.Tensor, mask: torch.Tensor | None = None, reduction: str = "sum") -> torch.Tensor:
    """R_disen (Eq. 3), averaged over images: - sum_k sum_{j != k} ||h_k - h_j||_1 over the ordered pairs
    of an image's real concepts ("sum"), or that sum / (K (K - 1)) ("mean"). maps (B, K, h, w), already
    normalised; mask (B, K) marks real concepts (images with fewer than two contribute 0)."""
    if reduction not in REDUCTIONS:
        raise ConfigError(f"disen_reduction={reduction!r}: expected one of {REDUCTIONS}")
    mask = _check_maps(maps, mask)
    flat = maps.flatten(2)
    dist = (flat.unsqueeze(2) - flat.unsqueeze(1)).abs().sum(-1)  # (B, K, K)
    m = mask.to(flat.dtype)
    pair = m.unsqueeze(2) * m.unsqueeze(1) * (1 - torch.eye(maps.shape[1], dtype=flat.dtype, device=flat.device))
    per_image = (dist * pair).sum((1, 2))  # Eq. 3: every ordered pair (j, k), j != k
    if reduction == "mean":
        per_image = per_image / pair.sum((1, 2)).clamp_min(1.0)
    return -per_image.mean()


def contrastive_loss(scores: torch.Tensor, labels: torch.Tensor, mode: str = "infonce") -> torch.Tensor:
    """L_contr from scores (B, C) = v_i.t_c / tau against every class text. "infonce" (Eq. 2): image i's
    text t_i is its class's, the negatives are the other N - 1 texts of the batch (a class present n
    times counts n times); "symmetric": mean of Eq. 2 and its text-to-image twin (reference train.py);
    "classes": cross-entropy over all C class texts."""
    if mode not in CONTRASTIVE:
        raise ConfigError(f"deal contrastive={mode!r}: expected one of {CONTRASTIVE}")
    if mode == "classes":
        return F.cross_entropy(scores, labels)
    pairs = scores[:, labels]  # (N, N): v_i . t_m / tau
    target = torch.arange(len(labels), device=scores.device)
    loss = F.cross_entropy(pairs, target)
    return (loss + F.cross_entropy(pairs.t(), target)) / 2 if mode == "symmetric" else loss


def localize_loss(maps: torch.Tensor, category_map: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """R_local = mean over images of || (1/K) sum_k h_k - h_y ||_1, the L1 distance between the mean
    concept map and the category map. maps (B, K, h, w) and category_map (B, h, w), normalised."""
    mask = _check_maps(maps, mask)
    if tuple(category_map.shape) != (maps.shape[0], *maps.shape[2:]):
        raise ConfigError(f"category map: expected {(maps.shape[0], *maps.shape[2:])}, got {tuple(category_map.shape)}")
    m = mask.to(maps.dtype)[..., None, None]
    mean = (maps * m).sum(1) / m.sum(1).clamp_min(1.0)
    return (mean - category_map).abs().flatten(1).sum(-1).mean()


@register_method("deal")
class DEAL(ConceptPromptExplanations, Method):
    Config = DEALConfig
    inputs = frozenset({"features", "patches"})
    train_defaults = CoOp.train_defaults  # the CoOp-family schedule (SGD, lr 0.002, batch 32, cosine, warm-up)

    def __init__(self, backbone, classnames, config=None, *, concepts: dict[str, Sequence[str]] | None = None,
                 **kw) -> None:
        super().__init__(backbone, classnames, config, **kw)
        c = self.config
        if self.multilabel:
            raise ConfigError("deal explains each image's own class: it needs a single-label dataset")
        given = dict(concepts) if concepts is not None else dict(c.concepts)
        if not given and not c.bank:  # the registered dataset's bank (PH2: its criteria per diagnosis), recorded
            c.bank = default_bank("concepts", dataset=getattr(self.context.get("dataset"), "name", "") or "")
        if not given and not c.bank:  # never a default bank on another dataset's classes
            raise ConfigError("deal needs concepts: set bank (--set bank=deal/cub, ph2, ... or a bank JSON file) "
                              "or concepts={class: [phrases]}; the PH2 criteria are the default on PH2 only")
        self.concept_lists: ConceptLists = resolve_concepts(self.classnames, concepts=given or None, bank=c.bank,
                                                            class_map=c.class_map, top_k=c.n_concepts or None,
                                                            bank_exclude=self.context.get("knowledge_exclude"))
        # the resolved lists go into the config, so a results folder re-creates the same prompts
        c.concepts = {n: list(p) for n, p in zip(self.classnames, self.concept_lists.concepts)}
        index, mask = self.concept_lists.tables()
        self.register_buffer("concept_index", index, persistent=False)
        self.register_buffer("concept_mask", mask, persistent=False)
        def join(p: list[str]) -> str:  # Sec. 3.2: "with [CONCEPT_1], [CONCEPT_2], ..., and [CONCEPT_K]"
            return " and ".join(p) if len(p) < 3 else ", ".join(p[:-1]) + ", and " + p[-1]

        cats = [f"{name} with {join(list(p))}" for name, p in zip(self.classnames, self.concept_lists.concepts)]
        cons = [f"{self.classnames[ci]} with {p}" for ci, p in self.concept_lists.flat]
        self.concept_names = [f"{self.classnames[ci]}: {p}" for ci, p in self.concept_lists.flat]
        # one shared context for all C category and T concept prompts: "[V]_1..[V]_M [CAT] with ... ."
        # ContextPrompt refuses prompts longer than the context length; here the concept lists make them long
        try:
            self.prompt = ContextPrompt.from_config(backbone, cats + cons, c)
        except PromptLengthError as err:
            raise PromptLengthError(f"deal prompts: {err}; a category prompt lists all its class's concepts: use "
                                    f"fewer or shorter concepts (n_concepts={c.n_concepts})") from err
        self.adapter: nn.Module = TokenAdapter(backbone.embed_dim) if c.image_adapter else nn.Identity()
        if c.explain_prompts == "raw":  # the raw class names, then the raw concept phrases (frozen text tower)
            with torch.no_grad():
                raw = backbone.encode_texts(list(self.classnames) + [p for _, p in self.concept_lists.flat])
            self.register_buffer("raw_text", normalize(raw.float()), persistent=False)

    # -- prompts ---------------------------------------------------------------------------------
    def prompt_texts(self, ctx_words: str = "An image of") -> list[str]:
        """The C category prompts then the T concept prompts, with `ctx_words` in the context slots."""
        n = self.prompt.n_ctx
        return [f"{ctx_words} {p.split(' ', n)[n]}".strip() for p in self.prompt.prompts]

    def all_text_features(self) -> torch.Tensor:
        """L2-normalised features (C + T, D): category prompts, then concept prompts class by class."""
        return normalize(self.prompt())

    def explain_text(self, text: torch.Tensor | None = None) -> torch.Tensor:
        """(C + T, D) texts the heat maps explain: raw class names and concept phrases ("raw") or the
        category and concept prompts ("template"; `text`, default `all_text_features()`)."""
        if self.config.explain_prompts == "raw":
            return self.raw_text
        return self.all_text_features() if text is None else text

    def text_features(self) -> torch.Tensor:
        """The category prompts' features (C, D) (what the class logits read)."""
        return self.all_text_features()[: self.n_classes]

    # -- scores ----------------------------------------------------------------------------------
    def image_features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.adapter(batch["features"].float())

    def _scores(self, batch: dict[str, torch.Tensor], text: torch.Tensor | None = None) -> torch.Tensor:
        text = self.all_text_features() if text is None else text
        return clip_logits(self.image_features(batch), text, self.backbone.logit_scale.detach())  # (B, C + T)

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._scores(batch, self.all_text_features())[:, : self.n_classes]

    # -- heat maps -------------------------------------------------------------------------------
    def concept_maps(self, batch: dict[str, torch.Tensor], classes: torch.Tensor | None = None, *,
                     text: torch.Tensor | None = None, create_graph: bool = False) -> ConceptMaps:
        """Training-time heat maps from the patch tokens (raw, not normalised) of `classes` (default:
        the predicted class): Grad-CAM of each prompt's score on the adapted patch tokens (the score
        reads their mean), or patch-prompt similarity maps. `create_graph` keeps them differentiable."""
        if "patches" not in batch:
            raise ConfigError("deal heat maps need patch tokens: the batch has no 'patches'")
        patches = batch["patches"].float()
        b, n, _ = patches.shape
        side = math.isqrt(n)
        if side * side != n:
            raise ConfigError(f"deal: {n} patch tokens do not form a square grid")
        text = self.all_text_features() if text is None else text
        if classes is None:
            with torch.no_grad():
                classes = self._scores(batch, text)[:, : self.n_classes].argmax(1)
        mask = self.concept_mask[classes]
        text = self.explain_text(text)
        if self.config.heatmap == "similarity":
            sims = similarity_maps(self.adapter(patches), text, grid=(side, side))  # (B, C + T, h, w)
            rows = torch.arange(b, device=sims.device)
            cat = sims[rows, classes]
            con = sims[rows[:, None], self.n_classes + self.concept_index[classes]]
            if not create_graph:
                cat, con = cat.detach(), con.detach()
            return ConceptMaps(con, cat, mask, classes)
        scale = self.backbone.logit_scale.detach()

        def forward(tokens: torch.Tensor) -> ModelOutput:
            pooled = self.adapter(tokens).mean(1)  # lite: exactly the global feature
            return ModelOutput(logits=clip_logits(pooled, text, scale))

        cam = GradCAM(forward, self.adapter, reshape=vit_reshape((side, side)))
        res = cam.compute(patches, self._targets(classes), create_graph=create_graph)
        return ConceptMaps(res.maps[:, 1:], res.maps[:, 0], mask, classes, res.scores)

    def regularisers(self, maps: ConceptMaps) -> tuple[torch.Tensor, torch.Tensor]:
        """(R_disen, R_local) of heat maps, after `map_norm`."""
        con = normalize_heatmaps(maps.concepts, self.config.map_norm)
        cat = normalize_heatmaps(maps.category, self.config.map_norm)
        return disentangle_loss(con, maps.mask, self.config.disen_reduction), localize_loss(con, cat, maps.mask)

    # -- training --------------------------------------------------------------------------------
    def loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        c = self.config
        labels = batch["labels"]
        text = self.all_text_features()  # once per step, for the logits and every heat map
        contr = contrastive_loss(self._scores(batch, text)[:, : self.n_classes], labels, c.contrastive)  # Eq. 2
        regularised = c.lambda_disen > 0 or c.lambda_local > 0
        maps = self.concept_maps(batch, labels, text=text, create_graph=regularised)
        r_disen, r_local = self.regularisers(maps)
        total = contr + c.lambda_disen * r_disen + c.lambda_local * r_local if regularised else contr  # Eq. 5
        return {"loss": total, "contr": contr.detach(), "r_disen": r_disen.detach(), "r_local": r_local.detach()}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "concepts": self.concept_lists.summary(), "prompts": self.prompt_texts()}
