"""`conceptclip align`: train the `lite` projection heads contrastively on image-caption pairs.

CLIP's symmetric InfoNCE loss (Radford et al., 2021, Fig. 3) on the frozen towers' outputs, with one
change for small clinical datasets: captions built from annotations repeat, so images that share a
caption are all positives (soft targets spread evenly over them) instead of false negatives.
Tower outputs are cached, so only two linear heads and the temperature train: seconds on a CPU.
Images without a caption use the dataset's class prompt ("a photo of a {class}.").

Localisation-aware term (`patch_weight` > 0, ours): the same symmetric InfoNCE on a patch-level
image-caption score, the softmax-attention pooling of the caption's cosine similarity to each of the
image's patch tokens, s(I, T) = sum_m softmax_m(cos(z_m, t) / tau_p) cos(z_m, t) (tau_p ->0: the max
over patches, the token-wise similarity of FILIP, Yao et al., ICLR 2022, Eq. 4, with one text token).
An image then matches its caption through the regions that carry it, not only through the mean of all
patches; no masks are read. The global term is kept; the loss is global + patch_weight * patch.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from conceptclip.backbones.lite import LiteBackbone
from conceptclip.data.dataset import Dataset, Sample
from conceptclip.data.feature_cache import FeatureCache
from conceptclip.data.images import random_resized_flip
from conceptclip.errors import ConfigError
from conceptclip.io import save_tensors, write_json
from conceptclip.progress import progress


@dataclass
class AlignConfig:
    epochs: int = 300
    lr: float = 1e-3
    weight_decay: float = 0.05
    batch_size: int = 256
    augmented_views: int = 2  # extra random-resized-crop/flip views per image, cached once
    seed: int = 0
    patch_weight: float = 0.0  # weight of the localisation-aware patch-level term (0: global only)
    patch_temperature: float = 0.1  # tau_p of the softmax pooling over patches

    def __post_init__(self) -> None:
        if not self.patch_weight >= 0:
            raise ConfigError(f"patch_weight={self.patch_weight!r}: expected a weight >= 0")
        if not self.patch_temperature > 0:
            raise ConfigError(f"patch_temperature={self.patch_temperature!r}: expected a temperature > 0")


def captions_of(dataset: Dataset, samples: Sequence[Sample]) -> list[str]:
    out = []
    for s in samples:
        if s.caption:
            out.append(s.caption)
        elif s.label is not None:
            out.append(dataset.template.format(dataset.classnames[s.label]))
        else:
            raise ConfigError(f"sample {s.id!r} of {dataset.name!r} has neither a caption nor a label to align on")
    return out


def tower_image_features(backbone: LiteBackbone, dataset: Dataset, samples: Sequence[Sample],
                         cache: FeatureCache, views: int, seed: int, patches: bool = False) -> torch.Tensor:
    """Pooled frozen image-tower features (V, N, 1280), or with `patches` the patch features
    (V, N, h*w, 1280) in float16: view 0 plain, then augmented views."""
    kind, field = ("patches", "patches") if patches else ("plain", "pooled")

    def encode(pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        fmap = backbone.tower_features(pixels)
        if patches:
            return {"patches": fmap.flatten(2).transpose(1, 2).half()}
        return {"pooled": fmap.mean(dim=(2, 3))}

    out = [cache.get_or_compute(("lite-tower", backbone.tower_id(), dataset.fingerprint(), kind), samples,
                                encode, backbone.preprocess, desc="encoding images")[field]]
    for v in range(views):
        aug = random_resized_flip(random.Random(seed * 7919 + v))

        def preprocess(images, _aug=aug):
            return backbone.preprocess([_aug(im) for im in images])

        key = ("lite-tower", backbone.tower_id(), dataset.fingerprint(), "aug", seed, v) + (("patches",) if patches else ())
        out.append(cache.get_or_compute(key, samples, encode, preprocess, desc=f"encoding view {v + 1}/{views}")[field])
    return torch.stack(out)


def align(backbone: LiteBackbone, dataset: Dataset, ids: Sequence[str], out: str | Path,
          config: AlignConfig | None = None, cache: FeatureCache | None = None) -> dict:
    """Train the heads on the samples `ids` of `dataset`, load them into `backbone`, save them to `out`."""
    if not isinstance(backbone, LiteBackbone):
        raise ConfigError(f"align trains the heads of the 'lite' backbone; got {backbone.name!r}")
    cfg = config or AlignConfig()
    cache = cache or FeatureCache()
    samples = dataset.subset(ids)
    if len(samples) < 2:
        raise ConfigError(f"align needs at least 2 image-caption pairs, got {len(samples)}")
    texts = captions_of(dataset, samples)
    uniq = sorted(set(texts))
    caption_id = torch.tensor([uniq.index(t) for t in texts])
    use_patches = cfg.patch_weight > 0
    if use_patches:  # (V, N, M, 1280) float16; the pooled features are their mean
        patch_img = tower_image_features(backbone, dataset, samples, cache, cfg.augmented_views, cfg.seed, patches=True)
        img = patch_img.float().mean(dim=2)
    else:
        img = tower_image_features(backbone, dataset, samples, cache, cfg.augmented_views, cfg.seed)  # (V, N, 1280)
    with torch.no_grad():
        tok = backbone.tokenize(uniq).to(backbone.device)
        txt = torch.cat([backbone.text_tower_features(_slice(tok, i, i + 64))
                         for i in range(0, len(uniq), 64)]).cpu()  # (U, 384)

    heads = [backbone.image_head, backbone.text_head]
    params = [p for h in heads for p in h.parameters()] + [backbone.log_logit_scale]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    gen = torch.Generator().manual_seed(cfg.seed)
    n, views = len(samples), img.shape[0]
    history = []
    for epoch in progress(range(cfg.epochs), desc="aligning lite heads", unit="epoch", leave=False):
        order = torch.randperm(n, generator=gen)
        view = torch.randint(views, (n,), generator=gen)
        total = 0.0
        for s in range(0, n, cfg.batch_size):
            idx = order[s:s + cfg.batch_size]
            x = F.normalize(backbone.image_head(img[view[idx], idx]), dim=-1)
            cap = caption_id[idx]
            batch_caps, inverse = torch.unique(cap, return_inverse=True)
            t = F.normalize(backbone.text_head(txt[batch_caps]), dim=-1)
            scale = backbone._logit_scale_param().exp()
            loss = _symmetric_infonce(scale * x @ t.t(), inverse)  # (B, U_b) logits
            if use_patches:
                z = F.normalize(backbone.image_head(patch_img[view[idx], idx].float()), dim=-1)  # (B, M, D)
                loss = loss + cfg.patch_weight * _symmetric_infonce(
                    scale * patch_pooled_similarity(z, t, cfg.patch_temperature), inverse)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        sched.step()
        history.append(total / n)
    for p in params:
        p.requires_grad_(False)
    with torch.no_grad():
        x = F.normalize(backbone.image_head(img[0]), dim=-1)
        t = F.normalize(backbone.text_head(txt), dim=-1)
        top1 = float(((x @ t.t()).argmax(1) == caption_id).float().mean())
    out = Path(out)
    save_tensors(out, backbone.head_state(), metadata={"dataset": dataset.name, "pairs": str(n)})
    backbone.heads_path = str(out)
    backbone.name = f"lite:{out}"
    summary = {"pairs": n, "unique_captions": len(uniq), "epochs": cfg.epochs, "patch_weight": cfg.patch_weight,
               "final_loss": history[-1],
               "first_loss": history[0], "train_image_to_caption_top1": top1, "heads": str(out)}
    write_json(out.with_suffix(".json"), {**summary, "loss_curve": history[:: max(1, len(history) // 50)]})
    return summary


def _symmetric_infonce(logits: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """(image -> caption CE + caption -> images soft CE) / 2 on logits (B, U): each image has one true
    caption (`inverse`), each caption all the images that share it as positives."""
    loss_i = F.cross_entropy(logits, inverse)
    pos = (inverse.unsqueeze(0) == torch.arange(logits.shape[1]).unsqueeze(1)).float()
    loss_t = -(pos / pos.sum(1, keepdim=True) * logits.t().log_softmax(-1)).sum(1).mean()
    return (loss_i + loss_t) / 2


def patch_pooled_similarity(patches: torch.Tensor, text: torch.Tensor, temperature: float) -> torch.Tensor:
    """s[b, u] = sum_m softmax_m(c[b, u, m] / temperature) c[b, u, m], c = cosine of image b's patch m
    (B, M, D, unit rows) with caption u (U, D, unit rows): a soft maximum over the patches."""
    cos = torch.einsum("bmd,ud->bum", patches, text)
    return (cos / temperature).softmax(-1).mul(cos).sum(-1)


def _slice(tok, a: int, b: int):
    from conceptclip.backbones.base import TokenBatch

    return TokenBatch(tok.input_ids[a:b], tok.attention_mask[a:b], tok.eot_index[a:b])
