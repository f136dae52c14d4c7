"""A generation's settings: the one definition of what a user chooses for a generation.

`POST /v1/generations` takes these fields (`api.schemas.GenerationCreate` adds how to name the adapter and the
webhook), each is one column of `generations` (storage/models.py), `GenerationPublic` shows them back, the page's
generate form has an input named for each and "use these settings again" puts them all back into it
(api/services/gallery.py, api/static/styledrop.js), and the generate worker turns them into the sampler's
`GenerationRequest` (worker/generation.py). A new setting is a field here plus its column and migration;
tests/test_generation_settings.py fails until every one of those places carries it.

Bounds and defaults are the engine's (trainer/contracts/limits.py).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from trainer.contracts import limits

MAX_SEED = 2**31 - 1  # seeds are stored in 32-bit integer columns (SQLite and PostgreSQL INTEGER)


class GenerationSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=500)
    negative_prompt: str | None = Field(default=None, max_length=500)
    adapter_id: str | None = Field(default=None, description="A style adapter (null = the base model).")
    style_strength: float = Field(default=limits.DEFAULT_STYLE_STRENGTH, ge=limits.MIN_STYLE_STRENGTH,
                                  le=limits.MAX_STYLE_STRENGTH, description=(
        "λA, StyleDrop's style guidance: −1 = no style (the base model's prediction), 0 = the adapter as trained, "
        "above 0 pushes the style further (the paper uses 0–2; default 1)."))
    guidance_scale: float = Field(default=limits.DEFAULT_GUIDANCE_SCALE, ge=limits.MIN_GUIDANCE_SCALE,
                                  le=limits.MAX_GUIDANCE_SCALE, description=(
        "Classifier-free guidance g; the text guidance λB is g − 1 unless text_guidance is given."))
    text_guidance: float | None = Field(default=None, ge=limits.MIN_TEXT_GUIDANCE, le=limits.MAX_TEXT_GUIDANCE,
                                        description=(
        "λB, StyleDrop's text guidance, overriding guidance_scale (g = 1 + λB); the paper fixes λB = 5. "
        "Null = guidance_scale − 1."))
    subject_adapter_id: str | None = Field(default=None, description=(
        'A subject adapter (a style of kind "subject") mixed with the style adapter at every step: '
        "l = (1 − γ)·l_style + γ·l_subject."))
    subject_weight: float | None = Field(default=None, ge=limits.MIN_SUBJECT_WEIGHT, le=limits.MAX_SUBJECT_WEIGHT,
                                         description=(
        "γ, the subject's share (0 = the style alone, 1 = the subject alone; the paper uses 0.5–0.7). "
        f"Default {limits.DEFAULT_SUBJECT_WEIGHT:g} when subject_adapter_id is given; only with it."))
    steps: int = Field(default=limits.DEFAULT_STEPS, ge=limits.MIN_STEPS, le=limits.MAX_STEPS)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED, description="Default: random.")
    num_images: int = Field(default=1, ge=1, description="At most STYLEDROP_MAX_IMAGES_PER_REQUEST (4 by default).")
    strength: float | None = Field(
        default=None, gt=0.0, le=1.0, description="Image-to-image only (multipart with init_image); default "
        f"{limits.DEFAULT_IMG2IMG_STRENGTH:g}."
    )


SETTING_NAMES: tuple[str, ...] = tuple(GenerationSettings.model_fields)
