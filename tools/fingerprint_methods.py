"""A fixed-seed numeric fingerprint of every method, to show that a refactor changes no number.

    PYTHONPATH=src python tools/fingerprint_methods.py [--out FILE.json]

Each case builds a method on the `tiny-clip` backbone with a fixed seed, computes its logits and loss
terms on a fixed batch, takes 3 SGD steps through the method's own `backward` (training-free methods:
`fit_closed_form` / `after_fit`), and records sha256 hashes and sums of the logits, every loss term,
the trainable parameters and the learned state before and after, plus the method's explanation
outputs where it has them. Two runs of the same code give the same hashes; compare the JSON of two
versions of the code with `diff`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

CLASSES = ["melanoma", "nevus", "keratosis"]
CONCEPTS = {"melanoma": ["blue veil", "dark dots", "streaks"], "nevus": ["pigment network", "brown globules"],
            "keratosis": ["white cells", "smooth edge", "pink area"]}
PROMPTS = {"melanoma": "a photo of melanoma, which has blue veil.", "nevus": "a photo of nevus, which has round shape.",
           "keratosis": "a photo of keratosis, which has white cells."}
ENSEMBLES = {"melanoma": ["a photo of melanoma.", "melanoma with blue veil.", "dark melanoma."],
             "nevus": ["a photo of a nevus.", "a round nevus."],
             "keratosis": ["a photo of keratosis.", "keratosis with white cells.", "a pink keratosis.", "keratosis."]}


def digest(x: Any) -> Any:
    """sha256 (16 hex) and sum of a tensor; recursively for dicts, lists and dataclass-like objects."""
    if isinstance(x, torch.Tensor):
        t = x.detach().cpu().contiguous()
        raw = t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes()
        return {"sha": hashlib.sha256(raw).hexdigest()[:16], "sum": float(t.double().sum()) if t.numel() else 0.0,
                "shape": list(t.shape), "dtype": str(t.dtype)}
    if isinstance(x, dict):
        return {str(k): digest(v) for k, v in sorted(x.items(), key=lambda kv: str(kv[0]))}
    if isinstance(x, (list, tuple)):
        return [digest(v) for v in x]
    if hasattr(x, "__dataclass_fields__"):
        return {k: digest(getattr(x, k)) for k in x.__dataclass_fields__}
    if isinstance(x, float):
        return repr(x)
    return x if isinstance(x, (int, str, bool, type(None))) else repr(x)


def batch(backbone, n: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    d, s = backbone.embed_dim, backbone.image_size
    return {"features": torch.randn(n, d, generator=g), "patches": torch.randn(n, 16, d, generator=g),
            "pixels": torch.randn(n, 3, s, s, generator=g), "labels": torch.arange(n) % len(CLASSES),
            "index": torch.arange(n)}


def rationale_bank():
    from conceptclip.knowledge.schema import Provenance, simple_bank

    return simple_bank("toy", {"melanoma": ["blue veil", "irregular streaks", "irregular dots"],
                               "nevus": ["regular network", "regular dots", "irregular dots"],
                               "keratosis": ["white cells", "regular dots"]},
                       Provenance(kind="paper", citation="fingerprint bank"))


def concept_bank_file() -> str:
    """A concept bank of CONCEPTS at a fixed path (the path is part of the config)."""
    from pathlib import Path

    from conceptclip.knowledge.schema import Provenance, save_bank, simple_bank

    path = Path("/tmp/fingerprint_methods/concepts.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_bank(simple_bank("concepts", CONCEPTS, Provenance(kind="paper", citation="fingerprint bank")), path)
    return str(path)


def cases() -> list[tuple[str, str, dict[str, Any], dict[str, Any]]]:
    bank = rationale_bank()
    xc = {"concept_prompts": dict(PROMPTS)}
    xb = {"bank": concept_bank_file()}
    return [
        ("zeroshot", "zeroshot", {}, {}),
        ("clip_adapter", "clip_adapter", {}, {}),
        ("tip_adapter", "tip_adapter", {"beta_steps": 5, "alpha_steps": 4}, {}),
        ("tip_adapter_f", "tip_adapter_f", {"beta_steps": 5, "alpha_steps": 4}, {}),
        ("linear_probe", "linear_probe", {"c_grid": [0.1, 1.0, 10.0]}, {}),
        ("lp_pp", "lp_pp", {"epochs": 20}, {}),
        ("lp_pp_mm", "lp_pp", {"solver": "mm", "iterations": 20}, {}),
        ("coop", "coop", {}, {}),
        ("coop_csc_middle_init", "coop", {"n_ctx": 4, "class_specific": True, "class_token_position": "middle"}, {}),
        ("coop_front_words", "coop", {"ctx_init": "a photo of a", "class_token_position": "front"}, {}),
        ("cocoop", "cocoop", {}, {}),
        ("cocoop_random", "cocoop", {"ctx_init": "", "n_ctx": 3}, {}),
        ("kgcoop", "kgcoop", {}, {}),
        ("kgcoop_squared", "kgcoop", {"kg_form": "squared", "lam": 2.0}, {}),
        ("prograd", "prograd", {}, {}),
        ("prograd_t2", "prograd", {"temperature": 2.0, "lam": 0.5, "ctx_init": "", "n_ctx": 5}, {}),
        ("biomedcoop", "biomedcoop", {"n_prompts": 3}, {"ensembles": ENSEMBLES}),
        ("biomedcoop_v1", "biomedcoop", {"n_prompts": 4, "sccm": "l1", "kdsp_reduction": "batchmean",
                                         "selection": "per_image", "lambda_sccm": 25.0, "lambda_kdsp": 1.0,
                                         "temperature": 2.0}, {"ensembles": ENSEMBLES}),
        ("xcoop", "xcoop", xb, {}),
        ("xcoop_given_prompts", "xcoop", xc, {}),
        ("xcoop_irrelevant_topk", "xcoop", {**xb, "knowledge": "irrelevant", "top_k": 1, "lam": 0.3}, {}),
        ("xcoop_v1", "xcoop", {**xc, "soft_prompt": "matched", "ctx_init": "random", "token_loss": "squared",
                               "prompt_reduction": "mean", "ipa": "two_ce", "inference": "global",
                               "weight_token": 1.0, "weight_prompt": 1.0}, {}),
        ("xcoop_concepts_max", "xcoop", {**xc, "soft_prompt": "matched", "ctx_init": "concepts", "local_pool": "max",
                                         "knowledge": "random"}, {}),
        ("deal", "deal", {"concepts": CONCEPTS}, {}),
        ("deal_similarity", "deal", {"concepts": CONCEPTS, "heatmap": "similarity", "map_norm": "minmax",
                                     "contrastive": "symmetric", "explain_prompts": "template",
                                     "disen_reduction": "mean"}, {}),
        ("ecor", "ecor", {"visual_prompt": "shallow", "n_prompt_tokens": 2}, {"bank": bank}),
        ("ecor_grouped", "ecor", {"visual_prompt": "shallow", "pairs": "bank", "conditional_softmax": "grouped",
                                  "decision": "marginal"}, {"bank": bank}),
        ("ecor_AB6", "ecor", {"ablation": "AB6", "n_prompt_tokens": 2}, {"bank": bank}),
        ("ecor_AB2", "ecor", {"ablation": "AB2", "n_prompt_tokens": 2}, {"bank": bank}),
        ("ecor_variant", "ecor", {"ablation": "class_prompt_conditional", "n_prompt_tokens": 2}, {"bank": bank}),
        ("dror", "dror", {"visual_prompt": "shallow", "n_prompt_tokens": 2}, {"bank": bank}),
    ]


def fingerprint(backbone, label: str, name: str, config: dict[str, Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    from conceptclip.methods import create_method

    torch.manual_seed(0)
    method = create_method(name, backbone, CLASSES, json.loads(json.dumps(config)), **kwargs)
    b = batch(backbone)
    out: dict[str, Any] = {"config": digest(dict(sorted(vars(method.config).items()))),
                           "describe": json.loads(json.dumps(method.describe(), default=repr))}
    out["train_defaults"] = {str(k): type(method).train_defaults_for(k) for k in (None, 1, 4, 16)}
    out["state_0"] = digest(method.learned_state())
    train, val = batch(backbone, 9, 1), batch(backbone, 6, 2)
    chosen = method.fit_closed_form({k: train[k] for k in ("features", "labels")},
                                    {k: val[k] for k in ("features", "labels")})
    out["fit"] = digest(chosen)
    with torch.no_grad():
        out["logits_0"] = digest(method.logits(b))
    params = method.trainable_parameters()
    if params:
        opt = torch.optim.SGD(params, lr=0.05, momentum=0.9)
        for step in range(3):
            opt.zero_grad()
            terms = method.loss(b)
            out[f"loss_{step}"] = digest({k: v for k, v in terms.items()})
            method.backward(terms, lambda t: t.backward())
            out[f"grad_{step}"] = digest([p.grad for p in params])
            opt.step()
            method.on_train_step_end()
    else:
        out["loss_0"] = digest(method.loss(b))
    out["after_fit"] = digest(method.after_fit({k: train[k] for k in ("features", "labels")},
                                               {k: val[k] for k in ("features", "labels")}))
    out["params"] = digest([p for p in params])
    out["state"] = digest(method.learned_state())
    with torch.no_grad():
        out["logits"] = digest(method.logits(b))
    method.eval()
    for what in ("concept_scores", "explain"):
        if hasattr(method, what):
            try:
                with torch.no_grad():
                    out[what] = digest(getattr(method, what)(b))
            except Exception as exc:  # noqa: BLE001 - recorded, compared like any output
                out[what] = f"{type(exc).__name__}: {exc}"
    if name == "deal":
        with torch.no_grad():
            out["contributions"] = digest(method.concept_contributions(b))
        out["heat_maps"] = digest(method.heat_maps(b["pixels"][:2], torch.tensor([0, 2])))
        out["heat_maps_chefer"] = digest(method.heat_maps(b["pixels"][:2], explainer="chefer"))
        out["concept_maps"] = digest(method.concept_maps(b, b["labels"]))
    if name in ("ecor", "dror"):
        out["rationale_maps"] = digest(method.rationale_maps(b))
    # a round trip through the learned state
    torch.manual_seed(1)
    again = create_method(name, backbone, CLASSES, json.loads(json.dumps(vars(method.config), default=list)), **kwargs)
    again.load_learned_state(method.learned_state())
    with torch.no_grad():
        out["reloaded_logits"] = digest(again.eval().logits(b))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="")
    ap.add_argument("--only", default="")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from conceptclip.backbones import create_backbone

    backbone = create_backbone("tiny-clip")
    result: dict[str, Any] = {}
    for label, name, config, kwargs in cases():
        if args.only and label not in args.only.split(","):
            continue
        try:
            result[label] = fingerprint(backbone, label, name, config, kwargs)
        except Exception as exc:  # recorded: a case that fails must fail the same way before and after
            result[label] = {"error": f"{type(exc).__name__}: {exc}"}
        print(label, "error" if "error" in result[label] else "ok", file=sys.stderr)
    text = json.dumps(result, indent=1, sort_keys=True)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    else:
        print(text)


if __name__ == "__main__":
    main()
