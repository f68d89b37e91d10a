"""alignkit: a plugin registry of LLM alignment methods."""

from __future__ import annotations

__version__ = "0.1.0"
