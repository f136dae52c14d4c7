"""CLIP scoring: the tiny CLIP goes through the real loading path, and both scores equal a direct computation with
transformers' CLIPModel (get_image_features / get_text_features, normalised, cosine), one image at a time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPImageProcessorPil, CLIPModel, CLIPTokenizer

from trainer.clip import (
    build_tiny_clip,
    clip_style_score,
    clip_text_score,
    load_clip,
    resolve_clip_source,
)
from trainer.model import ModelLoadError

PROMPTS = ["a cat in stripes style", "a red house by the sea", "an apple on the table",
           "a church in the mountain in watercolor painting style", "zebra"]


def _images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    # Different sizes and aspect ratios, so resizing and centre-cropping are part of what is compared.
    sizes = [(256, 256), (320, 200), (96, 128), (256, 256), (70, 70)]
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes[:n]]


def _direct(directory: Path) -> tuple[CLIPModel, CLIPImageProcessorPil, CLIPTokenizer]:
    model = CLIPModel.from_pretrained(directory).eval()
    return model, CLIPImageProcessorPil.from_pretrained(directory), CLIPTokenizer.from_pretrained(directory)


@torch.no_grad()
def _direct_image(model: CLIPModel, proc: CLIPImageProcessorPil, image: Image.Image) -> torch.Tensor:
    feats = model.get_image_features(**proc(images=image, return_tensors="pt")).pooler_output[0]
    return feats / feats.norm()


@torch.no_grad()
def _direct_text(model: CLIPModel, tok: CLIPTokenizer, prompt: str) -> torch.Tensor:
    feats = model.get_text_features(**tok([prompt], return_tensors="pt")).pooler_output[0]
    return feats / feats.norm()


def test_tiny_clip_saved_and_loaded_back_equals_built(engine_tiny_clip_dir: Path) -> None:
    built = build_tiny_clip()
    loaded = load_clip(str(engine_tiny_clip_dir))
    a, b = built.model.state_dict(), loaded.model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert loaded.image_processor.crop_size == built.image_processor.crop_size
    assert loaded.tokenizer("a cat")["input_ids"] == built.tokenizer("a cat")["input_ids"]


def test_text_score_matches_clipmodel_directly(engine_tiny_clip_dir: Path) -> None:
    clip = load_clip(str(engine_tiny_clip_dir), batch_size=2)  # 5 images in chunks of 2, 2 and 1
    images = _images(5)
    scores = clip_text_score(clip, images, PROMPTS)

    model, proc, tok = _direct(engine_tiny_clip_dir)
    expected = torch.stack([_direct_image(model, proc, im) @ _direct_text(model, tok, p)
                            for im, p in zip(images, PROMPTS, strict=True)])
    assert scores.shape == (5,)
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=1e-5)
    assert float(expected.max() - expected.min()) > 1e-2  # the rows differ, so a swapped pairing would show


def test_style_score_matches_clipmodel_directly_mean_over_references(engine_tiny_clip_dir: Path) -> None:
    clip = load_clip(str(engine_tiny_clip_dir), batch_size=3)
    images, references = _images(4, seed=1), _images(2, seed=2)
    scores = clip_style_score(clip, images, references)

    model, proc, _ = _direct(engine_tiny_clip_dir)
    refs = [_direct_image(model, proc, r) for r in references]
    expected = torch.stack([torch.stack([_direct_image(model, proc, im) @ r for r in refs]).mean()
                            for im in images])
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=1e-5)
    # An image scored against itself as the only reference is a perfect match.
    torch.testing.assert_close(clip_style_score(clip, references[:1], references[:1]), torch.ones(1))


def test_scores_refuse_mismatched_inputs(engine_tiny_clip_dir: Path) -> None:
    clip = load_clip(str(engine_tiny_clip_dir))
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        clip_text_score(clip, _images(2), ["a cat"])
    with pytest.raises(ValueError, match="at least one style reference"):
        clip_style_score(clip, _images(1), [])


@pytest.mark.parametrize("name", ["nonsense", "./no/such/dir", "clip vit", "openai/"])
def test_a_name_that_is_nothing_fails_at_once(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("from_pretrained must not be tried for a name that is nothing")

    monkeypatch.setattr(CLIPModel, "from_pretrained", no_download)
    with pytest.raises(ModelLoadError, match=f"CLIP model '{name}' is neither a preset"):
        load_clip(name)


def test_hub_and_preset_names_resolve_without_loading(tmp_path: Path) -> None:
    assert resolve_clip_source("clip-vit-large-patch14") == "openai/clip-vit-large-patch14"
    assert resolve_clip_source("someone/their-clip") == "someone/their-clip"
    assert resolve_clip_source(str(tmp_path)) == str(tmp_path)


def test_unreachable_clip_names_the_id_and_the_local_alternative(monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache: the weights cannot be had
    with pytest.raises(ModelLoadError) as err:
        load_clip("openai/clip-vit-large-patch14", revision="main", local_files_only=True)
    message = str(err.value)
    assert "'openai/clip-vit-large-patch14'" in message
    assert "hf download openai/clip-vit-large-patch14 --local-dir DIR" in message and "--clip DIR" in message


def test_a_directory_without_clip_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(ModelLoadError, match=f"could not load CLIP weights for '{tmp_path}'"):
        load_clip(str(tmp_path))


def test_half_precision_clip_scores_close_to_float32(engine_tiny_clip_dir: Path) -> None:
    # The dtype path (pixels cast to the model's dtype, scores back in float32) on the CPU; the GPU test below runs it
    # on CUDA, where bfloat16 is what the service uses.
    images, references = _images(4, seed=4), _images(2, seed=5)
    full = load_clip(str(engine_tiny_clip_dir))
    half = load_clip(str(engine_tiny_clip_dir), dtype=torch.bfloat16)
    text = clip_text_score(half, images, PROMPTS[:4])
    assert text.dtype == torch.float32
    torch.testing.assert_close(text, clip_text_score(full, images, PROMPTS[:4]), atol=1e-2, rtol=0)
    torch.testing.assert_close(clip_style_score(half, images, references),
                               clip_style_score(full, images, references), atol=1e-2, rtol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_clip_scores_on_cuda_equal_the_cpu_ones(engine_tiny_clip_dir: Path) -> None:
    images, references = _images(5, seed=6), _images(2, seed=7)
    cpu = load_clip(str(engine_tiny_clip_dir))
    cuda = load_clip(str(engine_tiny_clip_dir), device="cuda")
    assert cuda.device.type == "cuda"
    torch.testing.assert_close(clip_text_score(cuda, images, PROMPTS), clip_text_score(cpu, images, PROMPTS),
                               atol=1e-4, rtol=0)
    torch.testing.assert_close(clip_style_score(cuda, images, references),
                               clip_style_score(cpu, images, references), atol=1e-4, rtol=0)
