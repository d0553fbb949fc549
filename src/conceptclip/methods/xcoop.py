"""XCoOp: concept-guided context optimisation (Bie, Luo, Chen, Chen, "XCoOp: Explainable Prompt
Learning for Computer-Aided Diagnosis via Concept-guided Context Optimization", IJCAI 2024).

What the paper adds to CoOp (Sec. 3; equation numbers as read here, see docs/xcoop.md):

- clinical concept prompts, one per class, from annotations or an LLM (Eq. 3):
      h_c = "a {modality} image of {class c}, which has {concept_1}, ..., {concept_n}."
- a class-specific soft prompt t_c = [V]_1 ... [V]_{M_c} [CLASS_c] whose length M_c is the number of
  content tokens of h_c, so soft token m pairs with concept-prompt token m;
- token-level alignment of the soft tokens v_{c,m} with the concept-prompt token embeddings
  e_{c,m} (Eq. 4), over the set Omega of all (c, m) pairs:
      L_T = (1 / |Omega|) sum_{(c,m)} || v_{c,m} - e_{c,m} ||_2^2
- prompt-level soft-hard alignment (Eq. 5): a contrastive loss that pulls each learned prompt
  feature w_c = g(t_c) towards its own concept-prompt feature h_c = g(h_c) and away from the other
  classes', with temperature tau = 0.9 (cos on L2-normalised features):
      L_P = -(1 / C) sum_c log( exp(cos(w_c, h_c) / tau) / sum_j exp(cos(w_c, h_j) / tau) )
- global-local image-prompt alignment (Eqs. 6-8), the global image feature f and the patch tokens
  p_1..p_N against the learned prompts, s the backbone's logit scale:
      z_c^G = s cos(f, w_c),   z_c^L = s (1 / N) sum_n cos(p_n, w_c)     ("max" pooling optional)
      L_IPA = CE(z^G, y) + lambda CE(z^L, y),   lambda = 0.1
- total (Eq. 9): L = L_IPA + alpha L_T + beta L_P, alpha = beta = 1; every term can be switched off.

Inference is CoOp's: p(y = c | x) = softmax_c(z^G). Explanations: textual (ranked cosine distance
of each learned class prompt to every clinical concept prompt), visual (patch-prompt similarity
maps, `explain.method_similarity_maps`), t-SNE of learned vs concept tokens, and knowledge
interventions (`knowledge="random"|"irrelevant"` retrains with the clinical prompts replaced).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from conceptclip.errors import ConfigError
from conceptclip.explain.textual import PromptExplanation, explain_prompt
from conceptclip.methods import register_method
from conceptclip.methods.base import Method, MethodConfig
from conceptclip.prompts import normalize
from conceptclip.prompts.concept_context import MatchedContextPrompt, reference_prompts, special_token_ids

KNOWLEDGE = ("clinical", "random", "irrelevant")
LOCAL_POOLS = ("mean", "max")
CTX_INITS = ("random", "concepts")
# Knowledge intervention "irrelevant": everyday-object phrases in place of the clinical concepts.
IRRELEVANT_CONCEPTS = (
    "four wheels", "a steering wheel", "a wooden handle", "green leaves", "a brick wall", "a cloudy sky",
    "a metal fork", "a paper cup", "a red roof", "a leather ball", "a striped shirt", "a glass window",
    "a rubber tyre", "a ceramic plate", "a sandy beach", "a wooden fence", "a plastic bottle", "a violin bow",
)


@dataclass
class XCoOpConfig(MethodConfig):
    bank: str = "ph2"  # "ph2" (PH2 criteria per diagnosis), a shared-bank name or a bank JSON file
    class_map: dict[str, str] = field(default_factory=dict)  # dataset class -> bank class
    concept_prompts: dict[str, str] = field(default_factory=dict)  # class -> clinical prompt (beats `bank`)
    modality: str = "dermoscopy"
    top_k: int = 0  # at most this many concepts per class (0: all)
    min_frequency: float = 0.0  # keep bank concepts present in at least this fraction of the class
    knowledge: str = "clinical"  # clinical | random | irrelevant (knowledge intervention)
    knowledge_seed: int = 0
    ctx_init: str = "random"  # random N(0, init_std^2) | concepts (the concept-prompt token embeddings)
    init_std: float = 0.02
    token_alignment: bool = True  # L_T, Eq. 4
    prompt_alignment: bool = True  # L_P, Eq. 5
    local_alignment: bool = True  # local term of L_IPA, Eq. 7
    weight_token: float = 1.0  # alpha, Eq. 9
    weight_prompt: float = 1.0  # beta, Eq. 9
    tau: float = 0.9  # temperature of L_P
    lam: float = 0.1  # lambda: weight of the local (patch) alignment in L_IPA
    local_pool: str = "mean"  # mean | max over patches
    concept_template: str = "a {modality} image with {concept}."  # concept prompts of the textual explanation


# -- the paper's terms, pure functions -------------------------------------------------
def token_alignment_loss(context: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """L_T (Eq. 4): mean over the aligned (class, position) pairs of ||v - e||_2^2; both (N, W)."""
    return (context - targets.to(context.dtype)).pow(2).sum(-1).mean()


def prompt_alignment_loss(soft: torch.Tensor, hard: torch.Tensor, tau: float = 0.9) -> torch.Tensor:
    """L_P (Eq. 5): InfoNCE over classes of the learned (C, D) vs concept-prompt (C, D) features,
    -(1/C) sum_c log softmax_j(cos(w_c, h_j) / tau)[c]."""
    sim = normalize(soft) @ normalize(hard.to(soft.dtype)).t() / tau
    return F.cross_entropy(sim, torch.arange(sim.shape[0], device=sim.device))


def local_logits(patches: torch.Tensor, text: torch.Tensor, scale: torch.Tensor | float,
                 pool: str = "mean") -> torch.Tensor:
    """z^L (Eq. 7): s * pool_n cos(p_n, w_c) for patches (B, N, D) and class features (C, D) -> (B, C)."""
    sim = normalize(patches.to(text.dtype)) @ normalize(text).t()  # (B, N, C)
    pooled = sim.mean(1) if pool == "mean" else sim.amax(1)
    return scale * pooled


def global_logits(features: torch.Tensor, text: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """z^G (Eq. 6): s * cos(f, w_c) -> (B, C)."""
    return scale * normalize(features.to(text.dtype)) @ normalize(text).t()


# -- knowledge ---------------------------------------------------------------------------
@dataclass
class Knowledge:
    """Per class: its clinical concepts (with bank frequencies where known) and the reference
    prompt the soft prompt aligns with (the clinical prompt, or its intervention)."""

    concepts: dict[str, list[str]]
    frequency: dict[str, dict[str, float | None]]
    clinical_prompts: dict[str, str]
    source: str


def resolve_knowledge(config: XCoOpConfig, classnames: Sequence[str],
                      bank_exclude: Sequence[str] | None = None) -> Knowledge:
    """The clinical concepts and prompts of every class, from `concept_prompts` or the bank (a bank
    counted from per-image annotations never counts `bank_exclude`, see `load_bank_any`)."""
    from conceptclip.knowledge.prompts import display_name, select_concepts
    from conceptclip.knowledge.templates import XCOOP

    if config.concept_prompts:
        missing = [c for c in classnames if not str(config.concept_prompts.get(c, "")).strip()]
        if missing:
            raise ConfigError(f"xcoop concept_prompts: no prompt for classes {missing}")
        return Knowledge({c: [] for c in classnames}, {c: {} for c in classnames},
                         {c: config.concept_prompts[c] for c in classnames}, "given prompts")
    from conceptclip.prompts.ensembles import load_bank_any

    bank = load_bank_any(config.bank, exclude=bank_exclude)
    concepts, freq, prompts = {}, {}, {}
    for c in classnames:
        key = config.class_map.get(c, c)
        if key not in bank.classes:
            raise ConfigError(f"xcoop bank {config.bank!r}: no class {key!r} for dataset class {c!r} "
                              f"(bank classes: {', '.join(bank.classes)}; map them with class_map)")
        chosen = select_concepts(bank, key, config.top_k or None, config.min_frequency or None)
        if not chosen:
            raise ConfigError(f"xcoop bank {config.bank!r}: class {key!r} has no concepts left "
                              f"(top_k={config.top_k}, min_frequency={config.min_frequency})")
        concepts[c] = [x.phrase for x in chosen]
        freq[c] = {x.phrase: x.frequency for x in chosen}
        prompts[c] = XCOOP.fill(modality=config.modality, classname=display_name(c), concepts=concepts[c])
    return Knowledge(concepts, freq, prompts, f"bank {bank.name!r} ({config.bank})")


def irrelevant_prompts(knowledge: Knowledge, modality: str, seed: int = 0) -> dict[str, str]:
    """The clinical prompts with every class's concepts replaced by as many everyday-object phrases
    (seeded choice; the class name and template stay)."""
    from conceptclip.knowledge.prompts import display_name
    from conceptclip.knowledge.templates import XCOOP

    rng = random.Random(seed)
    out = {}
    for c, concepts in knowledge.concepts.items():
        n = max(1, len(concepts) or knowledge.clinical_prompts[c].count(",") + 1)
        phrases = rng.sample(IRRELEVANT_CONCEPTS, min(n, len(IRRELEVANT_CONCEPTS)))
        out[c] = XCOOP.fill(modality=modality, classname=display_name(c), concepts=phrases)
    return out


# -- the method ---------------------------------------------------------------------------
@register_method("xcoop")
class XCoOp(Method):
    Config = XCoOpConfig
    inputs = frozenset({"features", "patches"})
    # the paper's optimiser: SGD lr 0.032, constant warm-up then cosine (epochs/batch as the CoOp family here)
    train_defaults = {"optimizer": "sgd", "lr": 0.032, "batch_size": 32, "epochs": 50, "warmup_epochs": 1,
                      "warmup_lr": 1e-5}

    def __init__(self, backbone, classnames, config=None, **kw) -> None:
        super().__init__(backbone, classnames, config, **kw)
        c = self.config
        for name, value, options in (("knowledge", c.knowledge, KNOWLEDGE), ("local_pool", c.local_pool, LOCAL_POOLS),
                                     ("ctx_init", c.ctx_init, CTX_INITS)):
            if value not in options:
                raise ConfigError(f"xcoop {name}={value!r}: expected one of {options}")
        if not c.tau > 0:
            raise ConfigError(f"xcoop tau={c.tau}: expected a positive temperature")
        for name in ("lam", "weight_token", "weight_prompt"):
            if getattr(c, name) < 0:
                raise ConfigError(f"xcoop {name}={getattr(c, name)}: expected a non-negative weight")
        if c.top_k < 0:
            raise ConfigError(f"xcoop top_k={c.top_k}: expected 0 (all concepts) or a positive number")
        self.knowledge = resolve_knowledge(c, self.classnames, self.context.get("knowledge_exclude"))
        # every clinical concept of every class, in first-appearance order (names of `concept_scores`)
        self.concept_names = list(dict.fromkeys(p for n in self.classnames for p in self.knowledge.concepts[n]))
        texts = self.knowledge.clinical_prompts
        if c.knowledge == "irrelevant":
            texts = irrelevant_prompts(self.knowledge, c.modality, c.knowledge_seed)
        ref = reference_prompts(backbone, [texts[n] for n in self.classnames])
        if c.knowledge == "random":
            ref = ref.randomized(backbone.token_embedding.num_embeddings, special_token_ids(backbone), c.knowledge_seed)
        self.reference = ref
        targets = ref.token_embeddings(backbone)
        # e_{c,m} of Eq. 4 and the concept-prompt features h_c of Eq. 5: fixed, recomputed, never checkpointed
        self.register_buffer("token_targets", targets, persistent=False)
        self.register_buffer("hard_features", normalize(ref.features(backbone)), persistent=False)
        self.prompt = MatchedContextPrompt(backbone, self.classnames, ref.lengths,
                                           init=targets if c.ctx_init == "concepts" else None, init_std=c.init_std)

    # -- prediction ---------------------------------------------------------------------
    def text_features(self) -> torch.Tensor:
        """L2-normalised learned class prompt features w_c (C, D)."""
        return normalize(self.prompt())

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return global_logits(batch["features"], self.text_features(), self.backbone.logit_scale.detach())

    def loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """L (Eq. 9) and every term; switched-off terms are reported (detached) but not optimised."""
        c = self.config
        scale = self.backbone.logit_scale.detach()
        text = self.text_features()
        labels = batch["labels"]
        ce = self.classification_loss(global_logits(batch["features"], text, scale), labels)
        total = ce
        terms: dict[str, torch.Tensor] = {"ce": ce.detach()}
        patches = batch.get("patches")
        if patches is None and c.local_alignment:
            raise ConfigError("xcoop local alignment needs patch tokens in the batch ('patches'); "
                              "use a backbone with patch tokens or set local_alignment=false")
        if patches is not None:
            with torch.set_grad_enabled(c.local_alignment and torch.is_grad_enabled()):
                local = self.classification_loss(local_logits(patches, text, scale, c.local_pool), labels)
            terms["local"] = local.detach()
            if c.local_alignment:
                total = total + c.lam * local
        terms["ipa"] = total.detach()
        with torch.set_grad_enabled(c.token_alignment and torch.is_grad_enabled()):
            token = token_alignment_loss(self.prompt.ctx, self.token_targets)
        with torch.set_grad_enabled(c.prompt_alignment and torch.is_grad_enabled()):
            prompt = prompt_alignment_loss(text, self.hard_features, c.tau)
        if c.token_alignment:
            total = total + c.weight_token * token
        if c.prompt_alignment:
            total = total + c.weight_prompt * prompt
        terms.update(token=token.detach(), prompt=prompt.detach())
        return {"loss": total, **terms}

    # -- explanations ----------------------------------------------------------------------
    @torch.no_grad()
    def concept_features(self, concepts: Sequence[str] | None = None) -> torch.Tensor:
        """L2-normalised features (K, D) of one prompt per concept (`concept_template`)."""
        concepts = list(concepts) if concepts is not None else self.concept_names
        if not concepts:
            raise ConfigError("xcoop: no clinical concepts to explain with (prompts were given as text; "
                              "pass the concepts explicitly)")
        texts = [self.config.concept_template.format(modality=self.config.modality, concept=k) for k in concepts]
        return normalize(self.backbone.encode_texts(texts).float())

    def concept_scores(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """cos(f, concept prompt k) of each image (B, K), concepts in `concept_names` order."""
        concepts = self.concept_features().to(batch["features"].device)
        return normalize(batch["features"].float()) @ concepts.t()

    @torch.no_grad()
    def explain(self, batch: dict[str, torch.Tensor], k: int = 3) -> dict[str, Any]:
        """Per image, a one-line rationale: the predicted class and the `k` clinical concepts its
        learned prompt lies nearest to (cosine distance, the textual explanation of the paper)."""
        from conceptclip.metrics.prompt_distance import prompt_concept_distance

        if not self.concept_names:
            return {}
        dist = prompt_concept_distance(self.text_features().float().cpu(), self.concept_features().cpu())
        pred = self.logits(batch).argmax(1).tolist()
        nearest = {c: [self.concept_names[int(j)] for j in dist.ranking[c, :k]] for c in set(pred)}
        return {"rationale": [f"{self.classnames[c]}: its learned prompt lies nearest to "
                              f"{', '.join(nearest[c])}" for c in pred],
                "nearest_concepts": {self.classnames[c]: v for c, v in nearest.items()}}

    def describe(self) -> dict[str, Any]:
        tok = getattr(self.backbone, "tokenizer", None)
        reference = [t if t is not None else (tok.decode(ids.tolist()) if hasattr(tok, "decode") else ids.tolist())
                     for t, ids in zip(self.reference.texts, self.reference.content_ids())]
        return {**super().describe(), "knowledge_source": self.knowledge.source,
                "clinical_concepts": self.knowledge.concepts, "reference_prompts": reference,
                "soft_prompt_lengths": self.prompt.lengths}


# -- explanations as data (drawing is report/'s job) ------------------------------------------
def home_classes(knowledge: Knowledge, classnames: Sequence[str], concepts: Sequence[str],
                 margin: float = 0.2) -> dict[int, int]:
    """{concept index: class index} for concepts that belong to one class: listed by one class only,
    or whose bank frequency in one class beats every other class's by at least `margin`."""
    out = {}
    for k, name in enumerate(concepts):
        holders = [(knowledge.frequency.get(c, {}).get(name), i) for i, c in enumerate(classnames)
                   if name in knowledge.concepts.get(c, [])]
        if len(holders) == 1:
            out[k] = holders[0][1]
        elif holders and all(f is not None for f, _ in holders):
            ranked = sorted(holders, reverse=True)
            if ranked[0][0] - ranked[1][0] >= margin:
                out[k] = ranked[0][1]
    return out


def concept_class_agreement(distance: torch.Tensor, home: dict[int, int]) -> float | None:
    """Share of concepts whose nearest learned class prompt is their home class, after removing each
    class prompt's mean distance (so a prompt near everything does not win every concept):

        d'_{ck} = d_{ck} - (1/K) sum_k' d_{ck'},   agreement = mean_{k in home} [argmin_c d'_{ck} = home(k)]
    """
    if not home:
        return None
    centred = distance - distance.mean(dim=1, keepdim=True)
    nearest = centred.argmin(dim=0)
    return sum(int(nearest[k]) == c for k, c in home.items()) / len(home)


@torch.no_grad()
def token_alignment_stats(method: XCoOp) -> dict[str, dict[str, float]]:
    """Per class: mean Euclidean distance of each soft token to its aligned concept-prompt token
    ("matched") and to the class's other concept-prompt tokens ("unmatched"), and the share of soft
    tokens whose nearest vocabulary token is the aligned one ("nearest_token_match")."""
    from conceptclip.metrics.prompt_distance import nearest_vocab_tokens

    table = method.backbone.token_embedding.weight.detach().float().cpu()
    ctx, targets = method.prompt.ctx.detach().float().cpu(), method.token_targets.float().cpu()
    out = {}
    for c, (sl, ids) in enumerate(zip(method.prompt.slices, method.reference.content_ids())):
        v, e = ctx[sl], targets[sl]
        d = torch.cdist(v, e)
        m = d.shape[0]
        off = d[~torch.eye(m, dtype=torch.bool)]
        near = nearest_vocab_tokens(v, table, k=1).token_ids[:, 0]
        out[method.classnames[c]] = {"matched": float(d.diagonal().mean()),
                                     "unmatched": float(off.mean()) if off.numel() else float("nan"),
                                     "nearest_token_match": float((near == ids.cpu()).float().mean())}
    return out


@dataclass
class TextualExplanation(PromptExplanation):
    """`explain.PromptExplanation` (distance (C, K) of learned class prompt c to clinical concept k,
    ranking nearest first) plus XCoOp's `home` classes of the concepts, `agreement`
    (`concept_class_agreement`) and `tokens` (`token_alignment_stats`)."""

    home: dict[int, int] = field(default_factory=dict)
    agreement: float | None = None
    tokens: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self, k: int = 5) -> dict[str, Any]:
        return {"nearest_concepts": super().to_dict(k)["nearest_concepts"],
                "home_class": {self.concepts[j]: self.classnames[c] for j, c in self.home.items()},
                "concept_class_agreement": self.agreement, "token_alignment": self.tokens}


def explain_textually(method: XCoOp, concepts: Sequence[str] | None = None, margin: float = 0.2) -> TextualExplanation:
    """XCoOp's textual explanation: every learned class prompt's cosine distance to every clinical
    concept prompt, ranked (`explain.explain_prompt`), with the agreement and token statistics."""
    names = list(concepts) if concepts is not None else method.concept_names
    feats = method.concept_features(names)
    base = explain_prompt(method, feats, names)
    home = home_classes(method.knowledge, method.classnames, names, margin)
    return TextualExplanation(list(method.classnames), names, base.distance, base.ranking, home=home,
                              agreement=concept_class_agreement(base.distance, home),
                              tokens=token_alignment_stats(method))


@dataclass
class TokenTSNE:
    """2-D t-SNE coordinates (2N, 2) of the N learned soft tokens followed by their N aligned
    concept-prompt tokens; `kind` "learned"/"concept", `class_index` and `position` per point,
    `token` the concept-prompt token each point is paired with."""

    coords: torch.Tensor
    kind: list[str]
    class_index: torch.Tensor
    position: torch.Tensor
    token: list[str]


@torch.no_grad()
def prompt_token_tsne(method: XCoOp, perplexity: float = 30.0, seed: int = 0, threads: int | None = 1) -> TokenTSNE:
    """t-SNE (scikit-learn, Barnes-Hut) of the learned soft tokens together with the concept-prompt
    token embeddings. A few hundred points: one thread by default (`threads`), since OpenMP threads
    competing for a busy CPU made it some 70x slower here; None lets scikit-learn choose."""
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    ctx, targets = method.prompt.ctx.detach().float().cpu(), method.token_targets.float().cpu()
    x = torch.cat([ctx, targets]).numpy()
    n = ctx.shape[0]
    if 2 * n < 4:
        raise ConfigError(f"t-SNE needs at least 4 points, the prompts have {2 * n}")
    perplexity = min(perplexity, (2 * n - 1) / 3)
    with threadpool_limits(limits=threads):
        coords = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
    cls = torch.cat([torch.full((m,), c) for c, m in enumerate(method.prompt.lengths)])
    pos = torch.cat([torch.arange(m) for m in method.prompt.lengths])
    tok = getattr(method.backbone, "tokenizer", None)
    ids = torch.cat(method.reference.content_ids()).tolist()
    words = tok.convert_ids_to_tokens(ids) if hasattr(tok, "convert_ids_to_tokens") else [str(i) for i in ids]
    return TokenTSNE(torch.from_numpy(coords).float(), ["learned"] * n + ["concept"] * n, cls.repeat(2),
                     pos.repeat(2), [str(w) for w in words] * 2)
