"""Per-dataset method options the protocol uses by default (overridable with `--set`).

PH2's classes are not all in a BiomedCoOp bank: its closest bank is DermaMNIST (HAM10000's seven
classes), which has "melanoma" and "melanocytic nevus" but no atypical nevus. PH2's melanoma uses
the bank's melanoma prompts, common nevus the melanocytic-nevus prompts, and atypical nevus (which
the bank does not describe) the template ensemble.
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "ph2": {
        "biomedcoop": {"bank": "biomedcoop/DermaMNIST",
                       "class_map": {"melanoma": "melanoma", "common nevus": "melanocytic nevus"}},
    },
}

# The comparison suite of BiomedCoOp (Table 1: few-shot) and the prompt learners of its base-to-novel table.
FEWSHOT_METHODS = ("zeroshot", "coop", "cocoop", "kgcoop", "prograd", "clip_adapter", "tip_adapter", "tip_adapter_f",
                   "linear_probe", "lp_pp", "biomedcoop")
BASE2NOVEL_METHODS = ("zeroshot", "coop", "cocoop", "kgcoop", "prograd", "biomedcoop")


def method_options(dataset: str, method: str, overrides: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The preset options of `method` on `dataset`, updated with user overrides."""
    opts = dict(PRESETS.get(dataset, {}).get(method, {}))
    opts.update((overrides or {}).get(method, {}))
    return opts
