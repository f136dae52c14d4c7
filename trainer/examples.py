"""Training input as (image, caption) pairs: several style images, each with its own caption, or a subject's
photos, each captioned with DreamBooth's subject prompt (`subject_prompt`).

Its own module with no project imports, so `train.py` can take these without importing the feedback code (which
scores with CLIP): round 2 of StyleDrop trains on the selected feedback images, each captioned with the
prompt it was rendered from ("A chihuahua in watercolor painting style").
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image


@dataclass(frozen=True)
class TrainingExample:
    """One training image with its own caption ("<content> in <descriptor> style")."""

    image: Image.Image
    caption: str

    def __post_init__(self) -> None:
        if not isinstance(self.image, Image.Image):
            raise TypeError(f"image must be a PIL image, got {type(self.image).__name__}")
        if not self.caption.strip():
            raise ValueError("caption must not be empty")


SUBJECT_TOKEN = "sks"  # DreamBooth's rare token [V]: few prior meanings for the text encoder to override


def subject_prompt(class_word: str, token: str = SUBJECT_TOKEN) -> str:
    """DreamBooth's subject prompt "a photo of [V] ⟨class⟩" that a subject adapter trains on (paper §3.4)."""
    class_word = class_word.strip()
    if not class_word:
        raise ValueError("a subject needs a class word (e.g. 'dog')")
    return f"a photo of {token} {class_word}"
