"""What one generation or training request may ask of the engine, and its defaults: their single statement.

`GenerationRequest.validate`, `TrainConfig`, `styledrop generate/train`, the API's request schemas
(`api/schemas.py`) and the service's settings (`storage/settings.py`) all read these; nothing restates them.
"""

from __future__ import annotations

MIN_STEPS, MAX_STEPS = 1, 100
DEFAULT_STEPS = 12  # aMUSEd's pipelines' default (docs/amused-notes.md §4)
MIN_GUIDANCE_SCALE, MAX_GUIDANCE_SCALE = 0.0, 50.0
DEFAULT_GUIDANCE_SCALE = 10.0
MIN_STYLE_STRENGTH, MAX_STYLE_STRENGTH = -1.0, 10.0
DEFAULT_STYLE_STRENGTH = 1.0
MIN_TEXT_GUIDANCE, MAX_TEXT_GUIDANCE = MIN_GUIDANCE_SCALE - 1, MAX_GUIDANCE_SCALE - 1  # λB = guidance_scale − 1
PAPER_TEXT_GUIDANCE = 5.0  # StyleDrop's λB ("fixing λB = 5.0 and controlling λA is sufficient"), arXiv 2306.00983
MIN_SUBJECT_WEIGHT, MAX_SUBJECT_WEIGHT = 0.0, 1.0  # γ: 0 = the style alone, 1 = the subject alone
DEFAULT_SUBJECT_WEIGHT = 0.5  # γ of style + subject mixing; the paper uses 0.5–0.7
# Image-to-image: the share of the schedule re-run from the init image (1.0 repaints everything); inpainting
# repaints the masked region fully.
DEFAULT_IMG2IMG_STRENGTH = 0.75
DEFAULT_INPAINT_STRENGTH = 1.0

DEFAULT_TRAIN_STEPS = 1500  # the aMUSEd StyleDrop recipe: 1500-2000 steps at batch 1 (aMUSEd report, Table 4)
