"""Errors that cross module lines: each message says what is wrong and how to fix it."""

from __future__ import annotations


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says why and what to do."""
