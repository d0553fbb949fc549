"""Shared mechanics of gradient explainers: capture a layer's activation during a forward pass
and take the gradient of several target scores with respect to it in one batched backward."""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import torch
from torch import nn

from conceptclip.errors import ConfigError


class ActivationCapture:
    """Context manager: record the output (or, with `use_input`, the first input) of `layer` on
    every call. An activation that does not require grad (frozen layers upstream) is replaced by
    a leaf that does, so gradients stop there instead of running through the frozen tower; one
    that does require grad is left in the graph, so gradients (and `create_graph`) reach the
    trainable parameters upstream."""

    def __init__(self, layer: nn.Module, use_input: bool = False) -> None:
        if not isinstance(layer, nn.Module):
            raise ConfigError(f"layer: expected a torch.nn.Module to hook, got {type(layer).__name__}")
        self.layer = layer
        self.use_input = use_input
        self.activations: list[torch.Tensor] = []
        self._handle: Any = None

    @staticmethod
    def _track(x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise ConfigError(f"hooked layer produced a {type(x).__name__}, expected a tensor activation")
        return x if x.requires_grad else x.detach().requires_grad_(True)

    def _pre_hook(self, _mod: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if args:
            x = self._track(args[0])
            self.activations.append(x)
            return (x, *args[1:]), kwargs
        key = next(iter(kwargs), None)
        if key is None:
            raise ConfigError("hooked layer was called without inputs")
        x = self._track(kwargs[key])
        self.activations.append(x)
        return args, {**kwargs, key: x}

    def _hook(self, _mod: nn.Module, _args: Any, out: Any) -> Any:
        if isinstance(out, tuple):
            x = self._track(out[0])
            self.activations.append(x)
            return (x, *out[1:])
        x = self._track(out)
        self.activations.append(x)
        return x

    def __enter__(self) -> "ActivationCapture":
        self.activations = []
        if self.use_input:
            self._handle = self.layer.register_forward_pre_hook(self._pre_hook, with_kwargs=True)
        else:
            self._handle = self.layer.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._handle.remove()

    def single(self) -> torch.Tensor:
        if len(self.activations) != 1:
            raise ConfigError(f"the hooked layer ran {len(self.activations)} times in one forward pass, expected "
                              "once (hook a layer the forward uses exactly once)")
        return self.activations[0]


_BATCHED_WARNED = False


def target_gradients(scores: torch.Tensor, inputs: Sequence[torch.Tensor], *, create_graph: bool = False,
                     batched: bool = True) -> list[torch.Tensor]:
    """Gradients of each target's scores with respect to each of `inputs`.

    scores (B, T): T targets on B images. Returns, per input x, a (T, *x.shape) tensor whose
    [t] slice is d(sum_b scores[b, t]) / dx. Images of a batch must not interact (eval mode), so
    that slice holds each image's own gradient. `batched` runs the T backward passes as one
    vectorised backward (`is_grads_batched`), else a loop over targets (never over images).
    """
    global _BATCHED_WARNED
    t = scores.shape[1]
    inputs = list(inputs)
    if batched and t > 1:
        eye = torch.eye(t, dtype=scores.dtype, device=scores.device)
        grad_out = eye[:, None, :].expand(t, *scores.shape)
        try:
            grads = torch.autograd.grad(scores, inputs, grad_outputs=grad_out, is_grads_batched=True,
                                        create_graph=create_graph, retain_graph=True,  # kept for the fallback
                                        allow_unused=True, materialize_grads=True)
            return list(grads)
        except RuntimeError as exc:  # an op without a vmap rule: fall back to a loop over targets
            if "vmap" not in str(exc).lower() and "batch" not in str(exc).lower():
                raise
            if not _BATCHED_WARNED:
                warnings.warn(f"batched target gradients unavailable ({str(exc).splitlines()[0][:120]}); "
                              "looping over targets", stacklevel=3)
                _BATCHED_WARNED = True
    per_target = []
    for i in range(t):
        g = torch.autograd.grad(scores[:, i].sum(), inputs, create_graph=create_graph,
                                retain_graph=create_graph or i < t - 1, allow_unused=True, materialize_grads=True)
        per_target.append(g)
    return [torch.stack([g[j] for g in per_target]) for j in range(len(inputs))]
