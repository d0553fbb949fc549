"""Shared prompt-learning parts: context vectors and class-token placement, fixed prompt features."""

from conceptclip.prompts.context import ContextPrompt, normalize
from conceptclip.prompts.text_features import class_text_features, encode_prompts

__all__ = ["ContextPrompt", "normalize", "class_text_features", "encode_prompts"]
