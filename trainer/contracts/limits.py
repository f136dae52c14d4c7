"""What one generation request may ask of the sampler, and its defaults: the engine's single statement of them.

`GenerationRequest.validate` and `styledrop generate` read these. The API cannot import the engine (one-way
imports), so `api/schemas.py` and the settings' `preview_steps` restate the numbers, and
`tests/test_engine_sampler.py::test_api_and_settings_agree_with_the_engine_limits` fails when they drift apart.
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
DEFAULT_SUBJECT_WEIGHT = 0.5  # γ of style + subject mixing; the paper uses 0.5–0.7
MAX_BATCH_ROWS = 64  # requests in one sampler batch: its memory (docs/benchmarks.md §7) is stated for 64 rows
