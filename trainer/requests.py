"""One generation request, and the checks that decide whether the sampler can run it, before any batch exists.

`GenerationRequest.validate` checks the request's own values; `check_request` adds what needs the model's token
geometry (its output size, an inpainting mask that selects nothing at token resolution). `sample` runs
`check_request` on every request before it builds a batch, and a worker that batches many users' requests runs
it first on each one, so it can fail the one bad request alone and sample the others (worker/generation.py).
Every refusal is a `SamplingError` whose message names the field.

Output size (`output_size`): explicit `height`/`width` win (a multiple of 16 px, at most limits.MAX_IMAGE_SIDE;
0 or 250 are refused, never replaced or rounded). Without them a request with an init image keeps that image's
own size, floored to a multiple of 16 px, as diffusers' AmusedImg2ImgPipeline / AmusedInpaintPipeline do (its
VaeImageProcessor): a 200x330 image is 12x20 tokens, not a stretched 16x16 (docs/amused-notes.md §4). A larger
image than MAX_IMAGE_SIDE is scaled down to fit, its aspect kept (diffusers would try the full size). Requests
without an init image use the model's native resolution.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from .checks import check_finite, check_int, check_seed, check_side
from .contracts import limits
from .contracts.images import ImageModeError, to_mask, upright_size

__all__ = ["GenerationRequest", "SamplingError", "check_request", "check_requests", "mask_grid", "output_size"]


class SamplingError(ValueError):
    """A request the sampler cannot run (bad numbers, mask/init mismatch); the message names the field."""


@dataclass
class GenerationRequest:
    prompt: str
    negative_prompt: str | None = None
    seed: int = 0
    adapter: str | None = None  # name of an adapter loaded in the model's LoraBank, None = base model
    style_strength: float = limits.DEFAULT_STYLE_STRENGTH  # λA; 0 keeps the adapter as trained, larger pushes
    guidance_scale: float = limits.DEFAULT_GUIDANCE_SCALE  # CFG g (λB = g − 1); ≤ 1 disables the negative branch
    text_guidance: float | None = None  # λB itself (the paper's 5.0: limits.PAPER_TEXT_GUIDANCE); overrides g
    subject: str | None = None  # a subject adapter mixed with the style one: l = (1 − γ)·l_style + γ·l_subject
    subject_weight: float = limits.DEFAULT_SUBJECT_WEIGHT  # γ
    steps: int = limits.DEFAULT_STEPS
    init_image: Image.Image | None = None  # image-to-image / inpainting source (contracts/images.py: any mode)
    strength: float = 1.0  # share of the schedule re-run from init_image; 1.0 repaints everything
    mask: Image.Image | None = None  # inpainting: white = repaint, black or transparent = keep (binarised at 0.5)
    temperature: tuple[float, float] = (2.0, 0.0)  # Gumbel noise on confidences, annealed linearly
    aesthetic_score: float = 6.0

    @property
    def cfg_scale(self) -> float:
        """The classifier-free guidance scale g = 1 + λB actually used."""
        return self.guidance_scale if self.text_guidance is None else 1.0 + self.text_guidance

    def validate(self) -> None:
        """Raise SamplingError, naming the field, for any value of this request the sampler cannot run."""
        err = SamplingError
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise err("prompt must not be empty")
        check_int("steps", self.steps, limits.MIN_STEPS, limits.MAX_STEPS, err)
        check_seed("seed", self.seed, err)
        for name, value, lo, hi in (
            ("guidance_scale", self.guidance_scale, limits.MIN_GUIDANCE_SCALE, limits.MAX_GUIDANCE_SCALE),
            ("style_strength", self.style_strength, limits.MIN_STYLE_STRENGTH, limits.MAX_STYLE_STRENGTH),
            ("subject_weight", self.subject_weight, 0.0, 1.0),
        ):
            check_finite(name, value, lo=lo, hi=hi, error=err)
        if self.text_guidance is not None:
            check_finite("text_guidance", self.text_guidance, lo=limits.MIN_TEXT_GUIDANCE,
                         hi=limits.MAX_TEXT_GUIDANCE, error=err)
        check_finite("aesthetic_score", self.aesthetic_score, error=err)
        if not isinstance(self.temperature, tuple | list) or len(self.temperature) != 2:
            raise err(f"temperature must be a (start, end) pair, got {self.temperature!r}")
        for i, t in enumerate(self.temperature):
            check_finite(f"temperature[{i}]", t, lo=0.0, error=err)
        check_finite("strength", self.strength, error=err)
        if not 0.0 < self.strength <= 1.0:
            raise err(f"strength must be in (0, 1], got {self.strength}")
        if (self.init_image is not None or self.mask is not None) and int(self.steps * self.strength) < 1:
            raise err(f"strength {self.strength} with {self.steps} steps leaves no step to run")
        for name, im in (("init_image", self.init_image), ("mask", self.mask)):
            if im is not None and not isinstance(im, Image.Image):
                raise err(f"{name} must be a PIL image, got {type(im).__name__}")
        if self.mask is not None and self.init_image is None:
            raise err("mask needs an init_image")
        if self.mask is not None and self.init_image is not None:
            mask_size, init_size = upright_size(self.mask), upright_size(self.init_image)
            if mask_size != init_size:
                raise err(f"mask size {mask_size} differs from init_image size {init_size} (both upright)")


def output_size(req: GenerationRequest, height: int | None, width: int | None, *, scale: int,
                default: int) -> tuple[int, int]:
    """(height, width) in pixels that `req` is sampled at (the module's rule); SamplingError names a bad side."""
    if height is not None:
        check_side("height", height, scale, SamplingError)
    if width is not None:
        check_side("width", width, scale, SamplingError)
    if req.init_image is None:
        return height or default, width or default
    w, h = upright_size(req.init_image)
    fit = min(1.0, limits.MAX_IMAGE_SIDE / max(w, h))  # only ever down: keeps the aspect
    own_h, own_w = int(h * fit) // scale * scale, int(w * fit) // scale * scale  # floor, as VaeImageProcessor
    if (height is None and own_h < scale) or (width is None and own_w < scale):
        raise SamplingError(f"init_image is {w}x{h}: each side must be at least {scale} px")
    return height or own_h, width or own_w


def mask_grid(mask: Image.Image, grid: tuple[int, int]) -> list[bool]:
    """The inpainting mask at token resolution (h, w): resized with Lanczos and binarised at 0.5, as diffusers'
    inpainting pipeline does; row-major, True = repaint."""
    h, w = grid
    m = to_mask(mask)
    if m.size != (w, h):
        m = m.resize((w, h), Image.Resampling.LANCZOS)
    return [v >= 128 for v in m.tobytes()]  # v / 255 >= 0.5 for 8-bit v


def check_request(req: GenerationRequest, height: int | None = None, width: int | None = None, *, scale: int = 16,
                  default: int = 256) -> tuple[int, int]:
    """Everything that can make `sample` refuse this request, checked alone; returns its output size.
    `scale` and `default` are the model's `vae_scale_factor` and `resolution`."""
    req.validate()
    size = output_size(req, height, width, scale=scale, default=default)
    if req.mask is not None:
        try:
            repaint = mask_grid(req.mask, (size[0] // scale, size[1] // scale))
        except ImageModeError as exc:
            raise SamplingError(f"mask: {exc}") from exc
        if not any(repaint):
            raise SamplingError("mask selects no region to repaint (it is black at token resolution)")
    return size


def check_requests(requests: Sequence[GenerationRequest], height: int | None = None, width: int | None = None, *,
                   scale: int = 16, default: int = 256) -> tuple[int, int]:
    """`check_request` for each (the error names the request's index) and their one shared output size."""
    if len(requests) > limits.MAX_SAMPLE_ROWS:
        raise SamplingError(f"at most {limits.MAX_SAMPLE_ROWS} requests per sample call, got {len(requests)}")
    sizes = []
    for i, req in enumerate(requests):
        try:
            sizes.append(check_request(req, height, width, scale=scale, default=default))
        except SamplingError as exc:
            raise SamplingError(f"request {i}: {exc}") from exc
    if len(set(sizes)) > 1:
        raise SamplingError(f"the requests of one sample call must share one output size, got {sorted(set(sizes))}: "
                            "sample each size apart (an init image keeps its own size)")
    return sizes[0]
