"""Our MaskGIT sampler against diffusers' deprecated aMUSEd pipelines, and its batching guarantees."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from diffusers import AmusedScheduler
from PIL import Image

from trainer.bank import LoraBank
from trainer.encode import encode_tokens, pil_to_tensor
from trainer.model import AmusedParts
from trainer.sampler import GenerationRequest, SamplingError, sample

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from diffusers import AmusedImg2ImgPipeline, AmusedInpaintPipeline, AmusedPipeline

from tests.helpers.engine import random_adapter


def pipeline(cls, parts: AmusedParts):  # type: ignore[no-untyped-def]
    pipe = cls(vqvae=parts.vqvae, tokenizer=parts.tokenizer, text_encoder=parts.text_encoder,
               transformer=parts.transformer, scheduler=AmusedScheduler(mask_token_id=parts.mask_token_id))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def init_image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def mask() -> Image.Image:
    m = np.zeros((256, 256), dtype=np.uint8)
    m[64:192, 32:160] = 255
    return Image.fromarray(m)


def tokens(parts: AmusedParts, *reqs: GenerationRequest) -> list[torch.Tensor]:
    return [r.tokens for r in sample(parts, list(reqs), decode=False)]


@pytest.mark.parametrize("seed,guidance,negative", [(0, 10.0, None), (1, 4.0, "blurry"), (2, 1.0, None)])
def test_text_to_image_tokens_equal_amused_pipeline(engine_parts: AmusedParts, seed: int, guidance: float,
                                                    negative: str | None) -> None:
    ref = pipeline(AmusedPipeline, engine_parts)(
        prompt="a cat", negative_prompt=negative, guidance_scale=guidance, num_inference_steps=12,
        generator=torch.Generator().manual_seed(seed), output_type="latent").images[0]
    (ours,) = tokens(engine_parts, GenerationRequest("a cat", negative_prompt=negative, guidance_scale=guidance,
                                                     seed=seed))
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("strength", [0.5, 0.75])
def test_image_to_image_tokens_equal_amused_img2img_pipeline(engine_parts: AmusedParts, init_image: Image.Image,
                                                             strength: float) -> None:
    ref = pipeline(AmusedImg2ImgPipeline, engine_parts)(
        prompt="a cat", image=init_image, strength=strength, generator=torch.Generator().manual_seed(3),
        output_type="latent").images[0]
    (ours,) = tokens(engine_parts, GenerationRequest("a cat", seed=3, init_image=init_image, strength=strength))
    assert torch.equal(ours, ref)


def test_inpainting_tokens_equal_amused_inpaint_pipeline(engine_parts: AmusedParts, init_image: Image.Image,
                                                         mask: Image.Image) -> None:
    ref = pipeline(AmusedInpaintPipeline, engine_parts)(
        prompt="a cat", image=init_image, mask_image=mask, generator=torch.Generator().manual_seed(4),
        output_type="latent").images[0]
    (ours,) = tokens(engine_parts, GenerationRequest("a cat", seed=4, init_image=init_image, mask=mask))
    assert torch.equal(ours, ref)


def test_inpainting_keeps_every_unmasked_token(engine_parts: AmusedParts, init_image: Image.Image,
                                               mask: Image.Image) -> None:
    original = encode_tokens(engine_parts, pil_to_tensor(init_image)[None])[0]
    keep = ~torch.from_numpy(np.asarray(mask.resize((16, 16), Image.Resampling.LANCZOS)) >= 128)
    (ours,) = tokens(engine_parts, GenerationRequest("a dog", seed=5, init_image=init_image, mask=mask))
    assert torch.equal(ours[keep], original[keep])
    assert not torch.equal(ours[~keep], original[~keep])


def test_image_to_image_strength_one_repaints_everything(engine_parts: AmusedParts, init_image: Image.Image) -> None:
    # Diffusers masks nothing at strength 1.0 (index wrap-around, docs/amused-notes.md §4); we mask every token, so the
    # init image cannot matter: two opposite init images give the same tokens.
    other = Image.fromarray(255 - np.asarray(init_image))
    a, b = (tokens(engine_parts, GenerationRequest("a cat", seed=6, init_image=im, strength=1.0))[0]
            for im in (init_image, other))
    assert torch.equal(a, b)
    half = [tokens(engine_parts, GenerationRequest("a cat", seed=6, init_image=im, strength=0.5))[0]
            for im in (init_image, other)]
    assert not torch.equal(half[0], half[1])  # below 1.0 the init image does shape the result


def test_mixed_batch_rows_equal_the_same_requests_alone(engine_parts: AmusedParts, init_image: Image.Image,
                                                        mask: Image.Image) -> None:
    bank = LoraBank(engine_parts.transformer, 2)
    bank.load(1, random_adapter(engine_parts, seed=7), name="slot0")
    bank.load(2, random_adapter(engine_parts, seed=8), name="slot1")
    requests = [
        GenerationRequest("a cat", seed=1, adapter="slot0", style_strength=1.0),
        GenerationRequest("a house", seed=2, adapter="slot1", style_strength=2.0, negative_prompt="ugly"),
        GenerationRequest("a tree", seed=3),
        GenerationRequest("a boat", seed=4, adapter="slot0", init_image=init_image, strength=0.5, steps=8),
        GenerationRequest("a dog", seed=5, adapter="slot1", init_image=init_image, mask=mask, guidance_scale=1.0),
    ]
    together = tokens(engine_parts, *requests)
    alone = [tokens(engine_parts, r)[0] for r in requests]
    for i, (t, a) in enumerate(zip(together, alone, strict=True)):
        assert torch.equal(t, a), f"row {i} differs in a batch"
    assert not torch.equal(together[0], tokens(engine_parts, GenerationRequest("a cat", seed=1))[0])


def test_style_strength_changes_the_output_only_with_an_adapter(engine_parts: AmusedParts) -> None:
    bank = LoraBank(engine_parts.transformer, 1)
    bank.load(1, random_adapter(engine_parts, seed=9), name="slot0")
    plain = [tokens(engine_parts, GenerationRequest("a cat", seed=1, style_strength=s))[0] for s in (0.0, 3.0)]
    assert torch.equal(plain[0], plain[1])
    styled = [tokens(engine_parts, GenerationRequest("a cat", seed=1, adapter="slot0", style_strength=s))[0]
              for s in (0.0, 3.0)]
    assert not torch.equal(styled[0], styled[1])


def test_decoded_images_have_the_model_resolution(engine_parts: AmusedParts) -> None:
    (result,) = sample(engine_parts, [GenerationRequest("a cat", steps=2)])
    assert result.image is not None and result.image.size == (256, 256) and result.image.mode == "RGB"


@pytest.mark.parametrize("kwargs,match", [
    ({"prompt": " "}, "prompt"),
    ({"steps": 0}, "steps"),
    ({"guidance_scale": -1.0}, "guidance_scale"),
    ({"strength": 0.0}, "strength"),
    ({"mask": Image.new("L", (8, 8))}, "init_image"),
])
def test_bad_requests_name_the_field(engine_parts: AmusedParts, kwargs: dict, match: str) -> None:
    req = GenerationRequest(**{"prompt": "a cat", **kwargs})
    with pytest.raises(SamplingError, match=match):
        sample(engine_parts, [req], decode=False)


def test_mask_size_must_match_init_image(engine_parts: AmusedParts, init_image: Image.Image) -> None:
    with pytest.raises(SamplingError, match="differs"):
        sample(engine_parts, [GenerationRequest("a cat", init_image=init_image, mask=Image.new("L", (128, 128)))])
    with pytest.raises(SamplingError, match="no region"):
        sample(engine_parts, [GenerationRequest("a cat", init_image=init_image, mask=Image.new("L", (256, 256)))])


def test_512_layout_tokens_equal_amused_pipeline(engine_tiny_dir) -> None:  # type: ignore[no-untyped-def]
    from trainer.model import load_base

    parts = load_base("tiny-512", tiny_dir=engine_tiny_dir)  # amused-512's layout: 32x32 tokens, U-ViT down/up
    assert parts.resolution == 512
    ref = pipeline(AmusedPipeline, parts)(prompt="a cat", generator=torch.Generator().manual_seed(0),
                                           num_inference_steps=6, output_type="latent").images[0]
    (ours,) = tokens(parts, GenerationRequest("a cat", seed=0, steps=6))
    assert ours.shape == (32, 32) and torch.equal(ours, ref)


def test_api_and_settings_agree_with_the_engine_limits() -> None:
    """The API's request schema and the settings take the engine's limits (trainer/contracts/limits.py): a request
    the API accepts must be one the sampler runs, with the same defaults."""
    from api.schemas import GenerationCreate
    from storage.settings import Settings
    from trainer.contracts import limits

    props = GenerationCreate.model_json_schema()["properties"]
    for name, lo, hi, default in (
        ("steps", limits.MIN_STEPS, limits.MAX_STEPS, limits.DEFAULT_STEPS),
        ("guidance_scale", limits.MIN_GUIDANCE_SCALE, limits.MAX_GUIDANCE_SCALE, limits.DEFAULT_GUIDANCE_SCALE),
        ("style_strength", limits.MIN_STYLE_STRENGTH, limits.MAX_STYLE_STRENGTH, limits.DEFAULT_STYLE_STRENGTH),
    ):
        assert (props[name]["minimum"], props[name]["maximum"], props[name]["default"]) == (lo, hi, default), name
        GenerationRequest("a cat", **{name: lo}).validate()
        GenerationRequest("a cat", **{name: hi}).validate()
        with pytest.raises(SamplingError, match=name):
            GenerationRequest("a cat", **{name: hi + 1}).validate()
    assert Settings.model_fields["preview_steps"].default == limits.DEFAULT_STEPS
    # λB and γ: the API's bounds are the sampler's, and its default γ is the engine's
    tg = props["text_guidance"]["anyOf"][0]
    assert (tg["minimum"], tg["maximum"]) == (limits.MIN_TEXT_GUIDANCE, limits.MAX_TEXT_GUIDANCE)
    sw = props["subject_weight"]["anyOf"][0]
    assert (sw["minimum"], sw["maximum"]) == (limits.MIN_SUBJECT_WEIGHT, limits.MAX_SUBJECT_WEIGHT)
    GenerationRequest("a cat", subject_weight=limits.MAX_SUBJECT_WEIGHT).validate()
    with pytest.raises(SamplingError, match="subject_weight"):
        GenerationRequest("a cat", subject_weight=limits.MAX_SUBJECT_WEIGHT + 0.1).validate()


def test_repeated_prompts_reuse_their_text_embeddings(engine_parts: AmusedParts) -> None:
    calls: list[int] = []
    handle = engine_parts.text_encoder.register_forward_hook(lambda *_: calls.append(1))
    try:
        reqs = [GenerationRequest("a cat", seed=1, steps=2), GenerationRequest("a dog", seed=2, steps=2)]
        first = tokens(engine_parts, *reqs)
        assert len(calls) == 3  # "a cat", "a dog" and the empty negative prompt, once each
        again = tokens(engine_parts, *reqs, GenerationRequest("a cat", seed=3, steps=2))
        assert len(calls) == 3  # all three served from the cache
        assert all(torch.equal(a, b) for a, b in zip(first, again, strict=False))
    finally:
        handle.remove()


def test_subject_mixing_gamma_ends_equal_each_adapter_alone_and_mixed_rows_share_a_batch(
        engine_parts: AmusedParts) -> None:
    bank = LoraBank(engine_parts.transformer, 2)
    bank.load(1, random_adapter(engine_parts, seed=11), name="style")
    bank.load(2, random_adapter(engine_parts, seed=12), name="dog")
    style_only = tokens(engine_parts, GenerationRequest("a dog", seed=1, adapter="style"))[0]
    subject_only = tokens(engine_parts, GenerationRequest("a dog", seed=1, adapter="dog"))[0]
    assert not torch.equal(style_only, subject_only)
    at = {g: tokens(engine_parts, GenerationRequest("a dog", seed=1, adapter="style", subject="dog",
                                                    subject_weight=g))[0] for g in (0.0, 0.6, 1.0)}
    assert torch.equal(at[0.0], style_only) and torch.equal(at[1.0], subject_only)
    assert not torch.equal(at[0.6], style_only) and not torch.equal(at[0.6], subject_only)
    requests = [GenerationRequest("a dog", seed=1, adapter="style", subject="dog", subject_weight=0.6),
                GenerationRequest("a cat", seed=2, adapter="style"),
                GenerationRequest("a tree", seed=3),
                GenerationRequest("a dog", seed=4, subject="dog", subject_weight=0.7, negative_prompt="ugly")]
    together = tokens(engine_parts, *requests)
    for i, (t, r) in enumerate(zip(together, requests, strict=True)):
        assert torch.equal(t, tokens(engine_parts, r)[0]), f"row {i} differs in a batch"
    with pytest.raises(SamplingError, match="subject_weight"):
        GenerationRequest("a dog", subject="dog", subject_weight=1.5).validate()


def test_text_guidance_is_lambda_b_and_equals_guidance_scale_minus_one(engine_parts: AmusedParts) -> None:
    by_scale = tokens(engine_parts, GenerationRequest("a cat", seed=5, guidance_scale=6.0))[0]
    by_lambda = tokens(engine_parts, GenerationRequest("a cat", seed=5, guidance_scale=10.0, text_guidance=5.0))[0]
    assert torch.equal(by_scale, by_lambda)
    with pytest.raises(SamplingError, match="text_guidance"):
        GenerationRequest("a cat", text_guidance=100.0).validate()
