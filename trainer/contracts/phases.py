"""The phases a training job passes through while a user waits, by name: the engine reports them
(`trainer/feedback.py: PhaseProgress`), the worker records them on the job and as `phase` events, and the API and
the pages show them. Torch-free, like the rest of `contracts/`.
"""

from __future__ import annotations

from enum import StrEnum


class Phase(StrEnum):
    """What a running job is doing now; `done` and `total` count the phase's own units."""

    RENDERING_CANDIDATES = "rendering_candidates"  # an automatic round renders its candidates (images)
    SCORING = "scoring"  # an automatic round scores its candidates with CLIP (images)
    TRAINING = "training"  # the training steps (steps)
    RENDERING_PREVIEWS = "rendering_previews"  # the finished adapter's preview images (images)
