"""The model names the engine accepts, torch-free: the aMUSEd presets and the CLIP presets with their hub ids, and
the shape of a hub id. `trainer/model.py` and `trainer/clip.py` load from these; the CLI's parsers name them in
their help without importing the model code.
"""

from __future__ import annotations

import re

# Preset name -> hub id. Anything else is a hub id or a local directory.
PRESETS = {"amused-256": "amused/amused-256", "amused-512": "amused/amused-512"}
TINY = "tiny"
TINY_512 = "tiny-512"  # the tiny preset with amused-512's layout: 512 px -> 32x32 tokens, U-ViT down/up-samples
DEFAULT_MODEL = "amused-256"

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # `org/name`, the only shape a hub repository id has

DEFAULT_CLIP = "openai/clip-vit-large-patch14"  # ViT-L/14: the paper's scorer, and aMUSEd's text tower
CLIP_PRESETS = {"clip-vit-large-patch14": DEFAULT_CLIP, "vit-l-14": DEFAULT_CLIP}
TINY_CLIP = "tiny"
