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

# Seeds: the range `torch.Generator.manual_seed` takes without wrapping (2**70 would raise an OverflowError deep
# inside torch). The service allows a narrower range of its own (api/schemas.py MAX_SEED: its database column).
MIN_SEED, MAX_SEED = 0, 2**64 - 1
# Output sides in pixels (height, width, and an init image's own size): a multiple of the VQ-GAN's 16 px per token,
# at most this. 1024 px is 64x64 tokens, 4096 per row: the sampler's (rows, tokens, codebook) float32 scratch is
# then 134 MB per row at 8192 codes; an unbounded side asked for tens of GB in one allocation.
MAX_IMAGE_SIDE = 1024
# Rows (requests) in one `sample` call: the worker's largest batch (generate_batch_size x max_images_per_request
# = 8 x 4) twice over; at the largest side that is the scratch above times 64. The sampler's memory
# (docs/benchmarks.md §7) is stated for this many rows.
MAX_SAMPLE_ROWS = 64
MAX_RANK = 256  # LoRA rank: the CLI's and the engine's bound (the recipe uses 16)

# Training and init images: the shorter side (once EXIF-upright) at least this many pixels. The service's default
# (storage/settings.py `min_image_side`, which a deployment may raise) and `styledrop train/generate`'s rule; the
# message is `contracts.images.too_small`'s. A smaller image is upscaled ~8x to the model's 256 px: mostly blur.
MIN_IMAGE_SIDE = 64
# A style image's own caption (the service's upload field `caption`, `styledrop train --caption`) and a subject's
# class word (`class_word`, `--class-word`): at most this many characters once stripped.
MAX_CAPTION = 500
MAX_CLASS_WORD = 64
