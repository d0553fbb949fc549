"""The scores CLIP-style prompt learners share: scaled-cosine class logits, plain cosines of global
features and of pooled patch tokens, and the KL term that distils a teacher's prediction (zero-shot
CLIP, a prompt ensemble) into the learned prompts.

    logits_bc = s * cos(f_b, t_c) = s * (f_b / ||f_b||) . t_c         (CLIP, Radford et al. 2021)
    L_KL      = T^2 * sum_{b,c} p^teacher_bc log(p^teacher_bc / p_bc) / N,   p = softmax(z / T)

Both keep one operation order (scale times the normalised image, then the product with the text;
the KL summed, then divided, then times T twice), so every method that uses them computes the same
bits as before they were shared.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from conceptclip.errors import ConfigError

KL_REDUCTIONS = ("batchmean", "numel")


def clip_logits(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor | float, *,
                normalized: bool = False) -> torch.Tensor:
    """s * normalise(image) @ text^T: image features (B, D) against L2-normalised class features (C, D)
    -> (B, C). The image is cast to the text's dtype and L2-normalised unless `normalized` says it
    already is; `scale` is the (detached) logit scale exp(s)."""
    if not normalized:
        image = F.normalize(image.to(text.dtype), dim=-1)
    return scale * image @ text.t()


def global_similarity(features: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """cos(p, t_c) of global image features (B, E) and class features (C, E) -> (B, C), both normalised here."""
    return F.normalize(features.to(text.dtype), dim=-1) @ F.normalize(text, dim=-1).t()


def local_similarity(patches: torch.Tensor, text: torch.Tensor, pool: str = "mean") -> torch.Tensor:
    """(1/M) sum_m cos(f_m, t_c) of patch tokens (B, M, E) and class features (C, E) -> (B, C) ("max": max over m)."""
    sim = F.normalize(patches.to(text.dtype), dim=-1) @ F.normalize(text, dim=-1).t()  # (B, M, C)
    return sim.mean(1) if pool == "mean" else sim.amax(1)


def kl_distillation(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0,
                    reduction: str = "batchmean") -> torch.Tensor:
    """T^2 KL(softmax(teacher / T) || softmax(student / T)) of logits (B, C), summed over the batch and the
    classes, then divided by the batch size ("batchmean", ProGrad's L_kl) or by B * C ("numel",
    BiomedCoOp's KDSP in its official code)."""
    if reduction not in KL_REDUCTIONS:
        raise ConfigError(f"KL reduction={reduction!r}: expected one of {KL_REDUCTIONS}")
    t = temperature
    kl = F.kl_div(F.log_softmax(student / t, -1), F.log_softmax(teacher / t, -1), reduction="sum", log_target=True)
    denom = student.numel() if reduction == "numel" else student.shape[0]
    return kl / denom * t * t
