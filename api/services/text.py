"""Checks on free text fields that str.strip() does not catch."""

from __future__ import annotations

import unicodedata

# Control, format (zero-width space/joiners, BOM, word joiner, bidi marks) and separator characters: a text made
# only of these renders as nothing, so as a descriptor it would train on an empty-looking prompt.
INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp"})


def is_invisible(text: str) -> bool:
    """True when no character of `text` would show (empty text included)."""
    return all(unicodedata.category(ch) in INVISIBLE_CATEGORIES for ch in text)
