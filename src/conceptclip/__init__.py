"""conceptclip: concept-guided, explainable prompt learning on CLIP-style models."""

__version__ = "0.1.0"

from conceptclip.errors import ConceptClipError  # noqa: F401
