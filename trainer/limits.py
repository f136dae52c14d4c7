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
