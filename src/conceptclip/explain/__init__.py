"""Explanations as tensors, never drawings: Grad-CAM and Chefer relevance maps (B, T, h, w),
similarity maps, concept scores, textual explanations of learned prompts and knowledge
interventions, all batched over images and targets. Drawing is `report.overlay`'s job."""

from conceptclip.explain.cam import BaseCAM, CAMResult, GradCAM, vit_reshape
from conceptclip.explain.chefer import AttentionRelevance, relevance_rule
from conceptclip.explain.intervention import (
    ConceptEdit,
    ConceptPromptClassifier,
    InterventionResult,
    knowledge_intervention,
)
from conceptclip.explain.maps import (
    BASELINES,
    baseline_maps,
    center_crop_geometry,
    center_gaussian_maps,
    load_masks,
    normalize_maps,
    random_maps,
    upsample_maps,
)
from conceptclip.explain.method import (
    explain_method,
    gradcam_for,
    method_forward,
    method_similarity_maps,
    method_text_features,
    relevance_for,
)
from conceptclip.explain.similarity import concept_scores, similarity_maps, top_concepts
from conceptclip.explain.targets import (
    ClassTarget,
    ConceptTarget,
    ModelOutput,
    PredictedClassTarget,
    class_targets,
    concept_targets,
)
from conceptclip.explain.textual import PromptExplanation, explain_prompt

__all__ = [
    "BASELINES", "AttentionRelevance", "BaseCAM", "baseline_maps", "CAMResult", "ClassTarget", "ConceptEdit", "ConceptPromptClassifier",
    "ConceptTarget", "GradCAM", "InterventionResult", "ModelOutput", "PredictedClassTarget", "PromptExplanation",
    "center_crop_geometry", "load_masks", "center_gaussian_maps", "class_targets", "concept_scores", "concept_targets",
    "explain_method", "explain_prompt", "gradcam_for", "knowledge_intervention", "method_forward",
    "method_similarity_maps", "method_text_features", "normalize_maps", "random_maps", "relevance_for",
    "relevance_rule", "similarity_maps", "top_concepts", "upsample_maps", "vit_reshape",
]
