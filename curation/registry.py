"""Registries name their entries as ``"package.module:attr"`` and import them on first use, so
listing the kinds (for a config check or ``--help``) never imports torch, TRL or vLLM."""

from __future__ import annotations

import importlib
from typing import Any


def load(ref: str) -> Any:
    """The attribute ``attr`` of ``package.module`` named by ``ref``, imported now."""
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)
