"""The documented error types. Every user-facing failure is one of these, with a one-line
message that names the file, field or value at fault and what was expected."""

from __future__ import annotations


class ConceptClipError(Exception):
    """Base class of every error conceptclip raises on purpose."""


class ConfigError(ConceptClipError, ValueError):
    """A bad option or config value (names the field and what was expected)."""


class PromptLengthError(ConfigError):
    """A prompt longer than the backbone's text context length (the tokenizer would cut it)."""


class DataError(ConceptClipError, ValueError):
    """A bad dataset, manifest, image or split file (names the file/row)."""


class BackboneError(ConceptClipError, ValueError):
    """An unknown or unloadable backbone (names the value and how to get it)."""


class MissingTowerError(BackboneError):
    """A backbone that serves stored embeddings was asked for what only a tower gives (pixels, patch
    tokens, new or learned prompts)."""


class CheckpointError(ConceptClipError, ValueError):
    """A missing, corrupt or unsafe checkpoint (names the file)."""


class KnowledgeError(ConceptClipError, ValueError):
    """A bad concept bank or knowledge file (names the file and JSON path)."""
