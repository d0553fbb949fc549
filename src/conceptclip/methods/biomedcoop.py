"""BiomedCoOp (Koleilat, Asgariandehkordi, Rivaz, Xiao, "BiomedCoOp: Learning to Prompt for
Biomedical Vision-Language Models", CVPR 2025).

The paper text available here is its project page only (no equations), so every formula below is
the official code's: GitHub HealthX-Lab/BiomedCoOp@7ceb5a8, trainers/BiomedCoOp/biomedcoop_biomedclip.py
(`CustomCLIP.forward`) and configs/trainers/BiomedCoOp/few_shot/<dataset>.yaml.

CoOp's learnable context (M = 4 tokens from "a photo of a") guided by per-class LLM prompt
ensembles {t_ci}, i = 1..P (P = N_PROMPTS = 50; prompt i of every class forms "prompt set" i):

- SCCM (semantic consistency by contextual mapping): mean squared error between the learned class
  features w_c and the ensemble mean tbar_c = normalise(mean_i t_ci) of ALL the class's prompts,
      L_SCCM = (1 / (C D)) sum_c sum_d (w_cd - tbar_cd)^2                  (torch MSELoss, mean)
- KDSP (knowledge distillation with selective prompting), per batch B:
      s_i   = (1/B) sum_b max_c  e^s cos(f_b, t_ci)       score of prompt set i
      z_i   = (s_i - median(s)) / median(|s - median(s)|)  (torch.median: the lower middle value)
      keep i  iff  |(z_i - mean z) / std z| <= tau         (std with Bessel's correction, torch.std)
      teacher logits  q_bc = e^s cos(f_b, normalise(mean_{kept i} t_ci))
      L_KDSP = sum_{b,c} KL(softmax(q_b) || softmax(l_b))_c / (B C)       (reduction sum / numel)
  with l the learned prompts' logits.
- Total: L = L_CE + lambda_SCCM L_SCCM + lambda_KDSP L_KDSP. Inference uses the learned prompts only.

Per-dataset (lambda_SCCM, lambda_KDSP, tau) come from the official few-shot configs (`DATASET_TABLE`);
PH2 (dermoscopy) takes DermaMNIST's. On any other dataset the defaults are OURS: the per-value median
of the eleven official configs, (0.75, 0.75, 1.5) (also BUSI's and Kvasir's values).

Our choices where the code does not say: a class with fewer than P prompts (a template fallback
or a short bank list) repeats its list cyclically to fill the P prompt sets; when the median
absolute deviation or the spread of z is zero (z undefined), or no prompt set passes (the official
code would give NaN in both cases), every prompt set is kept. Earlier readings stay reachable: `sccm="l1"`, `kdsp_reduction="batchmean"`,
`selection="per_image"` (per image and class, keep prompts with |s - mu| <= tau sigma), with
lambda_sccm=25, lambda_kdsp=1 and `--set epochs=50` reproduce the previous default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from conceptclip.errors import ConfigError
from conceptclip.knowledge.resolve import name_key
from conceptclip.methods import register_method
from conceptclip.methods.base import option
from conceptclip.methods.coop_family import ContextMethod, PhraseContextConfig
from conceptclip.prompts import normalize
from conceptclip.prompts.ensembles import encode_ensembles, ensemble_mean, resolve_ensembles
from conceptclip.prompts.logits import clip_logits, kl_distillation

# (lambda_SCCM, lambda_KDSP, tau) of configs/trainers/BiomedCoOp/few_shot/<name>.yaml (HealthX-Lab/BiomedCoOp@7ceb5a8)
DATASET_TABLE: dict[str, tuple[float, float, float]] = {
    "btmri": (0.5, 0.25, 1.5),
    "busi": (0.75, 0.75, 1.5),
    "chmnist": (0.25, 0.25, 1.5),
    "covid": (0.5, 2.0, 1.5),
    "ctkidney": (1.0, 0.5, 1.5),
    "dermamnist": (5.0, 20.0, 1.5),
    "kneexray": (5.0, 20.0, 1.75),
    "kvasir": (0.75, 0.75, 1.5),
    "lungcolon": (0.5, 0.5, 1.5),
    "octmnist": (1.0, 0.75, 1.5),
    "retina": (0.25, 0.25, 1.5),
}
DATASET_ALIASES = {"ph2": "dermamnist",  # PH2 is dermoscopy: DermaMNIST's values
                   "covid19": "covid"}  # the bank's name (COVID_19) for the config's (covid)
OTHER_DATASETS = (0.75, 0.75, 1.5)  # ours: per-value median of DATASET_TABLE


def dataset_values(name: str | None) -> tuple[tuple[float, float, float], str]:
    """(lambda_SCCM, lambda_KDSP, tau) for dataset `name` and where they come from."""
    key = name_key(name or "")
    key = DATASET_ALIASES.get(key, key)
    if key in DATASET_TABLE:
        return DATASET_TABLE[key], f"official few-shot config {key}.yaml"
    return OTHER_DATASETS, "ours: median of the official few-shot configs (dataset not in the table)"


BIOMEDCOOP_CODE = "code: HealthX-Lab/BiomedCoOp trainers/BiomedCoOp/biomedcoop_biomedclip.py"
BIOMEDCOOP_FEWSHOT = "code: HealthX-Lab/BiomedCoOp configs/trainers/BiomedCoOp/few_shot"
UNCHECKED = ("ours: CoOp's (end, one shared context); the official trainer reads CLASS_TOKEN_POSITION and CSC "
             "from configs not checked here")


@dataclass
class BiomedCoOpConfig(PhraseContextConfig):
    # BiomedCoOp publishes no equations: its context settings come from its official configs
    n_ctx: int = option(4, "context tokens M (used when ctx_init is empty)", BIOMEDCOOP_FEWSHOT)
    ctx_init: str = option("a photo of a", "words whose token embeddings start the context (M = their tokens)",
                           BIOMEDCOOP_FEWSHOT)
    class_token_position: str = option("end", "where [CLASS] stands: end | middle | front", UNCHECKED)
    class_specific: bool = option(False, "CSC: one context per class", UNCHECKED)
    bank: str = option("", "shared-bank name (e.g. 'biomedcoop/BUSI') or a bank JSON file; '' = templates only", "ours")
    class_map: dict[str, str] = option(help="dataset class -> bank class", source="ours", factory=dict)
    n_prompts: int = option(50, "N_PROMPTS: prompt sets per class", BIOMEDCOOP_CODE)
    lambda_sccm: float | None = option(None, "weight of L_SCCM; null: the dataset's value (DATASET_TABLE)",
                                       BIOMEDCOOP_FEWSHOT)
    lambda_kdsp: float | None = option(None, "weight of L_KDSP; null: the dataset's value (DATASET_TABLE)",
                                       BIOMEDCOOP_FEWSHOT)
    tau: float | None = option(None, "threshold of the prompt-set selection; null: the dataset's value",
                               BIOMEDCOOP_FEWSHOT)
    sccm: str = option("mse", "mse (official) | l1 (earlier reading: mean absolute difference)", BIOMEDCOOP_CODE)
    kdsp_reduction: str = option("numel", "numel: KL summed / (B C) (official) | batchmean: KL summed / B",
                                 BIOMEDCOOP_CODE)
    selection: str = option("batch", "batch: prompt sets by median/MAD z (official) | per_image: per image and class",
                            BIOMEDCOOP_CODE)
    temperature: float = option(1.0, "distillation temperature T (logits / T, loss x T^2); the official code has "
                                     "none (T = 1)", BIOMEDCOOP_CODE)

    def validate(self) -> None:
        super().validate()
        for name, allowed in (("sccm", ("mse", "l1")), ("kdsp_reduction", ("numel", "batchmean")),
                              ("selection", ("batch", "per_image"))):
            self.expect_choice(name, allowed)
        self.expect(self.n_prompts >= 1, "n_prompts", "a positive integer")
        for name in ("lambda_sccm", "lambda_kdsp", "tau"):
            value = getattr(self, name)
            self.expect(value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)), name,
                        "a number (null: the dataset's value)")
        self.expect(self.tau is None or self.tau >= 0, "tau", "a non-negative number")


def sccm_loss(learned: torch.Tensor, ensemble_mean_features: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """L_SCCM between learned (C, D) and ensemble-mean (C, D) features: mean squared (official) or absolute difference."""
    if kind == "l1":
        return F.l1_loss(learned, ensemble_mean_features)
    return F.mse_loss(learned, ensemble_mean_features)


def prompt_set_scores(image: torch.Tensor, feats: torch.Tensor, scale: torch.Tensor | float = 1.0) -> torch.Tensor:
    """s_i = mean over the batch of max over classes of scale * cos(f_b, t_ci): (P,) for image (B, D), feats (C, P, D)."""
    logits = scale * torch.einsum("bd,cpd->pbc", image, feats)  # (P, B, C)
    return logits.max(-1).values.mean(-1)


def select_prompt_sets(scores: torch.Tensor, tau: float) -> torch.Tensor:
    """Keep mask (P,): z = (s - median) / MAD, keep |(z - mean z) / std z| <= tau (all kept when undefined)."""
    s = scores.detach().double().cpu()
    med = torch.median(s)
    mad = torch.median((s - med).abs())
    keep_all = torch.ones_like(s, dtype=torch.bool)
    if len(s) < 2 or not mad > 0:
        return keep_all.to(scores.device)
    z = (s - med) / mad
    sd = torch.std(z)
    if not sd > 0:
        return keep_all.to(scores.device)
    keep = ((z - z.mean()) / sd).abs().le(tau)
    return (keep if keep.any() else keep_all).to(scores.device)  # none kept (tau < 1 / sqrt(2) at P = 2): all


def batch_teacher_logits(image: torch.Tensor, feats: torch.Tensor, tau: float,
                         scale: torch.Tensor | float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Official KDSP teacher: logits (B, C) from the kept prompt sets' normalised mean features, and the keep mask (P,)."""
    keep = select_prompt_sets(prompt_set_scores(image, feats, scale), tau)
    selected = normalize(feats[:, keep].mean(1))  # (C, D)
    return clip_logits(image, selected, scale, normalized=True), keep


def selective_teacher_logits(image: torch.Tensor, feats: torch.Tensor, mask: torch.Tensor, tau: float,
                             scale: torch.Tensor | float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Earlier reading (`selection="per_image"`): teacher logits (B, C) and keep mask (B, C, P).

    Keep prompt j of class c for image b when |s - mu| <= tau * sigma (population std over the
    class's real prompts, mask (C, P)); the teacher logit is scale * mean_{kept j} s_bcj."""
    s = torch.einsum("bd,cpd->bcp", image, feats)  # (B, C, P)
    m = mask.unsqueeze(0).to(s.dtype)
    n = m.sum(-1, keepdim=True).clamp_min(1.0)
    mu = (s * m).sum(-1, keepdim=True) / n
    sigma = (((s - mu) ** 2) * m).sum(-1, keepdim=True).div(n).sqrt()
    keep = ((s - mu).abs() <= tau * sigma + 1e-12) & mask.unsqueeze(0)
    k = keep.to(s.dtype)
    return scale * (s * k).sum(-1) / k.sum(-1).clamp_min(1.0), keep


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0,
                      reduction: str = "numel") -> torch.Tensor:
    """L_KDSP: T^2 * KL(softmax(teacher / T) || softmax(student / T)) summed, divided by student.numel()
    (official) or by the batch size (`batchmean`)."""
    return kl_distillation(student, teacher, temperature, reduction)


@register_method("biomedcoop")
class BiomedCoOp(ContextMethod):
    Config = BiomedCoOpConfig
    # configs/trainers/BiomedCoOp/few_shot/*.yaml: SGD lr 0.0025, batch 4, 100 epochs, cosine, 1 constant warm-up epoch at 1e-5
    train_defaults = {"optimizer": "sgd", "lr": 0.0025, "batch_size": 4, "epochs": 100, "warmup_epochs": 1,
                      "warmup_lr": 1e-5}

    def __init__(self, backbone, classnames, config=None, *, ensembles: dict[str, list[str]] | None = None,
                 **kw) -> None:
        super().__init__(backbone, classnames, config, **kw)
        c = self.config
        if self.multilabel:
            raise ConfigError("biomedcoop's distillation needs a single-label dataset")
        dataset = self.context.get("dataset")
        table, source = dataset_values(getattr(dataset, "name", None))
        chosen = {name: float(value if getattr(c, name) is None else getattr(c, name))
                  for name, value in zip(("lambda_sccm", "lambda_kdsp", "tau"), table)}
        self.lambda_sccm, self.lambda_kdsp, self.tau = chosen["lambda_sccm"], chosen["lambda_kdsp"], chosen["tau"]
        self.values_source = source if all(getattr(c, n) is None for n in chosen) else "given / " + source
        if ensembles is not None:  # given directly (class -> prompts), e.g. by a user
            missing = [n for n in self.classnames if not ensembles.get(n)]
            if missing:
                raise ConfigError(f"biomedcoop ensembles: no prompts for classes {missing}")
            from conceptclip.prompts.ensembles import Ensembles

            self.ensembles = Ensembles(list(self.classnames), [list(ensembles[n]) for n in self.classnames],
                                       {n: "given" for n in self.classnames})
        else:
            known = [n.replace("_", " ") for n in dataset.classnames] if dataset is not None else None
            self.ensembles = resolve_ensembles(self.classnames, c.bank, c.class_map, all_classes=known,
                                               exclude=self.context.get("knowledge_exclude"))
            if c.bank and all(s.startswith("templates") for s in self.ensembles.sources.values()):
                raise ConfigError(f"biomedcoop bank={c.bank!r} describes none of the classes {self.classnames}: "
                                  "map them with class_map={dataset class: bank class} or leave bank empty "
                                  "for the template fallback")
        self._encoded: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def encoded_ensembles(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(features (C, P, D), mask (C, P), ensemble means (C, D), prompt sets (C, n_prompts, D)), encoded once.

        The ensemble mean (SCCM) is over the class's first n_prompts real prompts; the prompt sets
        (KDSP) repeat a shorter list cyclically."""
        device = self.prompt.ctx.device
        if self._encoded is None or self._encoded[0].device != device:
            n = self.config.n_prompts
            firsts = [p[:n] for p in self.ensembles.prompts]
            feats, mask = encode_ensembles(self.backbone, firsts)
            feats, mask = feats.to(device), mask.to(device)
            counts = mask.sum(1)
            idx = torch.arange(n, device=device).unsqueeze(0) % counts.unsqueeze(1)  # (C, n)
            sets = torch.gather(feats, 1, idx.unsqueeze(-1).expand(-1, -1, feats.shape[-1]))
            self._encoded = (feats, mask, ensemble_mean(feats, mask), sets)
        return self._encoded

    def loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        c = self.config
        feats, mask, means, sets = self.encoded_ensembles()
        text = self.text_features()
        image = normalize(batch["features"].to(text.dtype))
        logits = clip_logits(image, text, self.backbone.logit_scale.detach(), normalized=True)
        ce = self.classification_loss(logits, batch["labels"])
        sccm = sccm_loss(text, means.to(text.dtype), c.sccm)
        scale = self.backbone.logit_scale.detach()
        with torch.no_grad():
            if c.selection == "batch":
                teacher, keep = batch_teacher_logits(image, sets.to(text.dtype), self.tau, scale)
                kept = keep.float().mean()
            else:
                teacher, keep = selective_teacher_logits(image, feats.to(text.dtype), mask, self.tau, scale)
                kept = (keep.sum(-1).float() / mask.sum(-1).clamp_min(1).float().unsqueeze(0)).mean()
        kdsp = distillation_loss(logits, teacher, c.temperature, c.kdsp_reduction)
        total = ce + self.lambda_sccm * sccm + self.lambda_kdsp * kdsp
        return {"loss": total, "ce": ce.detach(), "sccm": sccm.detach(), "kdsp": kdsp.detach(),
                "kept_fraction": kept.detach()}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "ensembles": self.ensembles.summary(),
                "values": {"lambda_sccm": self.lambda_sccm, "lambda_kdsp": self.lambda_kdsp, "tau": self.tau,
                           "source": self.values_source}}
