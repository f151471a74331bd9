"""'No model' as users and hosts spell it (CLI "none", ComfyUI/A1111 dropdowns "(none)", empty text fields).

Torch-free and importing nothing: the controls table and every step's options read it.
"""
from __future__ import annotations

from typing import Any

NONE_SPELLINGS = ("", "none", "(none)")


def is_none(value: Any) -> bool:
    """True for a value that means "no model": None or any of NONE_SPELLINGS (any case, spaces ignored)."""
    return value is None or str(value).strip().lower() in NONE_SPELLINGS


__all__ = ["NONE_SPELLINGS", "is_none"]
