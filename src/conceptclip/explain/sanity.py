"""Sanity checks for saliency maps (Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018).

A map that explains a trained model must change when what the model learned is destroyed:

- model-parameter randomisation test (paper Sec. 4): the method's learned parameters (prompt
  context vectors, adapters, heads: everything outside the frozen backbone) are re-drawn at random,
  `randomize_learned`; the frozen backbone is kept, since it is not what the method learned;
- data randomisation test (paper Sec. 5): the same method trained on the same images with the
  labels permuted (the engine trains that twin: `conceptclip sanity RUN`).

For each map type the maps of the trained model and of the randomised twin, for the same images and
the same class (the trained model's prediction), are compared at image resolution with Spearman's
rank correlation and SSIM (`metrics.map_similarity`). Adebayo et al. read "similar" as a failure but
set no threshold; ours: a check fails when the mean rank correlation is at least 0.5
(`SANITY_THRESHOLD`): the maps keep more than half their ordering without the learned model.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, Literal

import torch

from conceptclip.errors import ConfigError
from conceptclip.explain.maps import upsample_maps
from conceptclip.explain.method import explain_method, method_similarity_maps
from conceptclip.explain.targets import ClassTarget
from conceptclip.metrics.map_similarity import map_rank_correlation, map_ssim, mean_finite

SANITY_THRESHOLD = 0.5  # ours: mean Spearman rank correlation at or above which a check fails
SanityTest = Literal["parameter_randomisation", "data_randomisation"]

EXPLAINER_NAMES = {"gradcam": "Grad-CAM", "similarity": "Image–prompt similarity", "chefer": "Chefer relevance"}
_PLAIN = {
    "parameter_randomisation": "when the model's learned parameters are replaced by random values",
    "data_randomisation": "when the model is trained on randomly permuted labels",
}


@dataclass
class SanityCheck:
    """One check of one map type: mean similarity between trained and randomised maps."""

    test: SanityTest
    explainer: str
    spearman: float  # mean over images of the rank correlation (NaN: constant maps)
    ssim: float
    images: int
    threshold: float = SANITY_THRESHOLD

    @property
    def applicable(self) -> bool:
        return not math.isnan(self.spearman)

    @property
    def passed(self) -> bool:
        return self.applicable and self.spearman < self.threshold

    def message(self) -> str:
        """One plain sentence for the page, the overlay and the command line."""
        what = _PLAIN[self.test]
        name = EXPLAINER_NAMES.get(self.explainer, self.explainer)
        if not self.applicable:
            return (f"{name} maps could not be checked {what} (the maps are constant); "
                    "do not read them as an explanation.")
        if self.passed:
            return (f"{name} maps pass the sanity check: they change {what} "
                    f"(rank correlation {self.spearman:.2f}, SSIM {self.ssim:.2f}).")
        return (f"{name} maps FAIL the sanity check: they barely change {what} "
                f"(rank correlation {self.spearman:.2f}, SSIM {self.ssim:.2f}), so they show what the "
                "frozen image encoder looks at, not why this model decided. Do not read them as an explanation.")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed, "applicable": self.applicable, "message": self.message()}


def learned_tensor_names(method: Any) -> list[str]:
    """Names of the floating tensors (parameters and buffers outside `backbone.`) that training
    changed: those that differ from a freshly built method of the same class and config (context
    vectors, adapters, probe weights, cache keys), not the fixed ones (hand-crafted prompt features,
    token ids). Falls back to the trainable parameters when the method cannot be rebuilt."""
    try:
        fresh = type(method)(method.backbone, method.classnames, method.config, template=method.template,
                             multilabel=method.multilabel, **getattr(method, "context", {}))
        reference = fresh.state_dict()
    except Exception:  # a method that needs more than its config to be built
        reference = None
    names = []
    for name, t in method.state_dict().items():
        if name.startswith("backbone.") or not t.is_floating_point() or t.numel() == 0:
            continue
        if reference is None:
            continue
        r = reference.get(name)
        if r is None or r.shape != t.shape or not torch.equal(r.to(t), t):
            names.append(name)
    if reference is None:
        names = [n for n, p in method.named_parameters() if not n.startswith("backbone.") and p.numel()]
    return names


def randomize_learned(method: Any, seed: int = 0) -> Any:
    """A copy of `method` whose learned tensors (`learned_tensor_names`) are random, sharing the
    frozen backbone.

    Each learned tensor is re-drawn i.i.d. from a normal distribution with that tensor's own mean and
    standard deviation (ours: the scale is kept, the learned structure is destroyed, as a
    re-initialisation does). Raises `ConfigError` when the method learned nothing (zero-shot)."""
    names = set(learned_tensor_names(method))
    if not names:
        raise ConfigError(f"method {getattr(method, 'name', type(method).__name__)!r} has no learned parameters: "
                          "the parameter randomisation test does not apply")
    backbone = getattr(method, "backbone", None)
    twin = copy.deepcopy(method, memo={id(backbone): backbone} if backbone is not None else {})
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(twin.named_parameters()) + list(twin.named_buffers()):
            if name not in names:
                continue
            mean = float(t.float().mean())
            std = float(t.float().std()) if t.numel() > 1 else 0.0
            noise = torch.randn(t.shape, generator=gen, dtype=torch.float32) * (std if std > 0 else 1.0) + mean
            t.copy_(noise.to(t))
    twin.eval()
    return twin


def class_maps(method: Any, pixels: torch.Tensor, explainer: str, classes: torch.Tensor) -> torch.Tensor:
    """Maps (B, h, w) of `explainer` for one class per image ("gradcam", "chefer", "similarity")."""
    if explainer in ("gradcam", "chefer"):
        return explain_method(method, pixels, [ClassTarget(classes)], explainer=explainer).maps[:, 0].detach()
    if explainer == "similarity":
        return method_similarity_maps(method, pixels)[torch.arange(len(classes)), classes]
    raise ConfigError(f"explainer {explainer!r}: expected 'gradcam', 'chefer' or 'similarity'")


def compare_maps(trained: torch.Tensor, randomised: torch.Tensor, size: int | tuple[int, int]) -> dict[str, torch.Tensor]:
    """Per-map Spearman and SSIM (B,) between two map stacks (B, h, w), compared at `size`."""
    a = upsample_maps(trained.float().cpu(), size)
    b = upsample_maps(randomised.float().cpu(), size)
    return {"spearman": map_rank_correlation(a, b), "ssim": map_ssim(a, b)}


def sanity_check(method: Any, twin: Any, pixels: torch.Tensor, explainer: str, test: SanityTest,
                 classes: torch.Tensor | None = None,
                 map_fn: Callable[[Any, torch.Tensor, str, torch.Tensor], torch.Tensor] = class_maps,
                 ) -> tuple[SanityCheck, dict[str, torch.Tensor]]:
    """Run one check on `pixels`: maps of `method` and of its randomised `twin` for the same class
    (default: `method`'s prediction). Returns the summary and the per-image similarities."""
    if test not in _PLAIN:
        raise ConfigError(f"sanity test {test!r}: expected one of {sorted(_PLAIN)}")
    if classes is None:
        from conceptclip.explain.method import method_forward

        with torch.no_grad():
            classes = method_forward(method)(pixels.to(method.backbone.device)).logits.argmax(-1).cpu()
    size = method.backbone.image_size
    per_image = compare_maps(map_fn(method, pixels, explainer, classes), map_fn(twin, pixels, explainer, classes), size)
    check = SanityCheck(test=test, explainer=explainer, spearman=mean_finite(per_image["spearman"]),
                        ssim=mean_finite(per_image["ssim"]), images=int(pixels.shape[0]))
    return check, per_image


class MapSanity:
    """A trained method with its randomised twins, ready to check its maps on any images: the
    learned-parameter twin (built here; absent for a method that learned nothing) and, when given,
    the data randomisation twin (the method retrained on permuted labels)."""

    def __init__(self, method: Any, data_twin: Any = None, seed: int = 0) -> None:
        self.method = method
        self.twins: dict[str, Any] = {}
        try:
            self.twins["parameter_randomisation"] = randomize_learned(method, seed)
        except ConfigError:
            pass  # nothing learned: the test does not apply
        if data_twin is not None:
            self.twins["data_randomisation"] = data_twin

    def check(self, pixels: torch.Tensor, explainers: list[str], classes: torch.Tensor | None = None,
              ) -> dict[str, list[SanityCheck]]:
        """Per explainer, one `SanityCheck` per available test on these images and classes."""
        out: dict[str, list[SanityCheck]] = {}
        for e in explainers:
            out[e] = [sanity_check(self.method, twin, pixels, e, test, classes)[0] for test, twin in self.twins.items()]
        return out


def failed(checks: list[SanityCheck] | list[dict]) -> bool:
    """True when any applicable check of a map type failed (dicts from `SanityCheck.to_dict` accepted)."""
    for c in checks:
        if isinstance(c, dict):
            if c.get("applicable") and not c.get("passed"):
                return True
        elif c.applicable and not c.passed:
            return True
    return False


def combine_checks(checks: list[SanityCheck]) -> list[SanityCheck]:
    """Checks of the same test over several batches -> one per test, image-weighted means."""
    by_test: dict[str, list[SanityCheck]] = {}
    for c in checks:
        by_test.setdefault(c.test, []).append(c)
    out = []
    for test, cs in by_test.items():
        def wmean(attr: str) -> float:
            pairs = [(getattr(c, attr), c.images) for c in cs if not math.isnan(getattr(c, attr))]
            n = sum(w for _, w in pairs)
            return sum(v * w for v, w in pairs) / n if n else math.nan
        out.append(SanityCheck(test, cs[0].explainer, wmean("spearman"), wmean("ssim"), sum(c.images for c in cs),
                               cs[0].threshold))
    return out
