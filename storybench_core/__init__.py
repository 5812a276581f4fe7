"""Storybench core: UI-free engine for benchmarking LLM fiction writing."""

from __future__ import annotations

__version__ = "0.1.0"
