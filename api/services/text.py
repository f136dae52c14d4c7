"""Checks on free text fields that str.strip() does not catch."""

from __future__ import annotations

import unicodedata

# Control, format (zero-width space/joiners, BOM, word joiner, bidi marks) and separator characters: a text made
# only of these renders as nothing, so as a descriptor it would train on an empty-looking prompt.
INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp"})


def is_invisible(text: str) -> bool:
    """True when no character of `text` would show (empty text included)."""
    return all(unicodedata.category(ch) in INVISIBLE_CATEGORIES for ch in text)


# Bidirectional controls (Unicode UAX #9): embeddings and overrides, isolates, and the implicit marks. Inside a
# caption, descriptor or prompt they reorder how the text reads on screen (a "Trojan Source" trick) without
# changing what the model gets; no request needs them.
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c")


ALLOWED_CONTROLS = frozenset("\t\n\r")  # whitespace a textarea sends (the gallery's prompt); tokenisers fold it


def unsafe_character(text: str) -> str | None:
    """A description of the first control (Cc other than tab and line breaks: escapes, NUL, DEL, …) or
    bidirectional control character in `text`, or None when it has neither. Every free text field of a request is
    refused with it (422)."""
    for n, ch in enumerate(text):
        if (unicodedata.category(ch) == "Cc" and ch not in ALLOWED_CONTROLS) or ch in BIDI_CONTROLS:
            kind = "bidirectional control" if ch in BIDI_CONTROLS else "control"
            return f"a {kind} character (U+{ord(ch):04X}) at position {n + 1}"
    return None
