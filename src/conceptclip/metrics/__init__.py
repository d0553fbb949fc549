"""Every metric of the reference papers, as pure batched functions on tensors (numpy arrays
accepted). Formulas are in each function's docstring; bad shapes raise `ConfigError` naming the
argument; undefined values (e.g. AUC of a class without positives) are NaN, never a crash."""

from conceptclip.metrics.bootstrap import BootstrapCI, bootstrap_ci
from conceptclip.metrics.calibration import ReliabilityBins, expected_calibration_error, reliability_bins
from conceptclip.metrics.classification import (
    accuracy,
    auc,
    balanced_accuracy,
    confusion_matrix,
    f1_score,
)
from conceptclip.metrics.concepts import (
    concept_prediction_accuracy,
    concept_slot_accuracy,
    disentanglability,
    localisability,
    part_miou,
)
from conceptclip.metrics.faithfulness import (
    PerturbationCurve,
    deletion_auc,
    gaussian_blur,
    insertion_auc,
    perturbation_curve,
)
from conceptclip.metrics.grounding import (
    binarize_maps,
    map_grounding_scores,
    normalize_maps,
    overlap_scores,
    pointing_game,
    resize_maps,
)
from conceptclip.metrics.intervention import InterventionEffect, intervention_effect, intervention_summary
from conceptclip.metrics.prompt_distance import (
    ConceptDistance,
    NearestTokens,
    nearest_vocab_tokens,
    prompt_concept_distance,
)
from conceptclip.metrics.rationale import rationale_grid, right_rationale
from conceptclip.metrics.retrieval import precision_at_k, recall_at_k, relevance_from_labels

ece = expected_calibration_error

__all__ = [
    "BootstrapCI",
    "ConceptDistance",
    "InterventionEffect",
    "NearestTokens",
    "PerturbationCurve",
    "ReliabilityBins",
    "accuracy",
    "auc",
    "balanced_accuracy",
    "binarize_maps",
    "bootstrap_ci",
    "concept_prediction_accuracy",
    "concept_slot_accuracy",
    "confusion_matrix",
    "deletion_auc",
    "disentanglability",
    "ece",
    "expected_calibration_error",
    "f1_score",
    "gaussian_blur",
    "insertion_auc",
    "localisability",
    "intervention_effect",
    "intervention_summary",
    "map_grounding_scores",
    "nearest_vocab_tokens",
    "normalize_maps",
    "overlap_scores",
    "part_miou",
    "perturbation_curve",
    "pointing_game",
    "precision_at_k",
    "prompt_concept_distance",
    "rationale_grid",
    "recall_at_k",
    "relevance_from_labels",
    "reliability_bins",
    "resize_maps",
    "right_rationale",
]
