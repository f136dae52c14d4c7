"""`styledrop eval`: on the tiny model and the tiny CLIP it renders one image per prompt with the adapter (the same
image `styledrop generate` makes with that seed), and its numbers are the CLIP scores of exactly those images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trainer.cli import main
from trainer.clip import clip_style_score, clip_text_score, load_clip
from trainer.contracts.images import NOT_AN_ALLOWED_FORMAT

PROMPTS_FILE = "# feedback prompts\nA chihuahua in stripes style\n\nA cabin on the beach in stripes style\n" \
               "  An apple on the table in stripes style  \n"
PROMPTS = ["A chihuahua in stripes style", "A cabin on the beach in stripes style",
           "An apple on the table in stripes style"]


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory: pytest.TempPathFactory, engine_tiny_dir: Path,
                engine_style_image: Image.Image) -> Path:
    d = tmp_path_factory.mktemp("eval")
    engine_style_image.save(d / "style.png")
    assert main(["train", str(d / "style.png"), "--descriptor", "stripes", "--content", "a grid", "--model",
                 str(engine_tiny_dir), "--steps", "3", "--checkpoint-every", "0", "--out", str(d / "adapter")]) == 0
    return d


def _images(directory: Path) -> list[Image.Image]:
    out = []
    for p in sorted(directory.iterdir()):
        with Image.open(p) as im:
            out.append(im.convert("RGB"))
    return out


def test_eval_prints_the_clip_scores_of_the_images_it_made(
    tmp_path: Path, adapter_dir: Path, engine_tiny_dir: Path, engine_tiny_clip_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(PROMPTS_FILE)
    style = adapter_dir / "style.png"
    assert main(["eval", str(adapter_dir / "adapter"), "--prompts", str(prompts), "--reference", str(style),
                 "--clip", str(engine_tiny_clip_dir), "--model", str(engine_tiny_dir), "--steps", "2",
                 "--seed", "5", "--batch-size", "2", "--json", "--out", str(tmp_path / "images")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [r["prompt"] for r in report["images"]] == PROMPTS
    assert [r["seed"] for r in report["images"]] == [5, 6, 7]
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["000005.png", "000006.png", "000007.png"]

    # The reported numbers are the paper's metrics of the saved (lossless PNG) images, computed independently.
    images = _images(tmp_path / "images")
    clip = load_clip(str(engine_tiny_clip_dir))
    with Image.open(style) as ref:
        expected_style = clip_style_score(clip, images, [ref.convert("RGB")])
    expected_text = clip_text_score(clip, images, PROMPTS)
    got_text = torch.tensor([r["text_score"] for r in report["images"]])
    got_style = torch.tensor([r["style_score"] for r in report["images"]])
    torch.testing.assert_close(got_text, expected_text, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_style, expected_style, atol=1e-5, rtol=1e-5)
    assert report["mean"]["text_score"] == pytest.approx(float(expected_text.mean()), abs=1e-5)
    assert report["mean"]["style_score"] == pytest.approx(float(expected_style.mean()), abs=1e-5)
    assert report["clip"] == str(engine_tiny_clip_dir) and report["steps"] == 2

    # The second image is what `styledrop generate` makes with the adapter and that seed: the same tokens; the
    # VQ-GAN decoding a batch of 2 instead of 1 may round a pixel differently by one level.
    assert main(["generate", PROMPTS[1], "--adapter", str(adapter_dir / "adapter"), "--model", str(engine_tiny_dir),
                 "--steps", "2", "--seed", "6", "--out", str(tmp_path / "generated")]) == 0
    with Image.open(tmp_path / "generated" / "000006.png") as im:
        generated = np.asarray(im.convert("RGB"), dtype=np.int16)
    same = np.abs(generated - np.asarray(images[1], dtype=np.int16))
    other = np.abs(generated - np.asarray(images[0], dtype=np.int16))  # seed 5: other tokens
    assert same.max() <= 1 and (same > 0).mean() < 0.01
    assert (other > 1).mean() > 0.1


def test_eval_table_without_references_has_no_style_score(
    tmp_path: Path, adapter_dir: Path, engine_tiny_dir: Path, engine_tiny_clip_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat in stripes style\n")
    assert main(["eval", str(adapter_dir / "adapter"), "--prompts", str(prompts), "--clip", str(engine_tiny_clip_dir),
                 "--model", str(engine_tiny_dir), "--steps", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["#", "text", "style", "prompt"]
    row = lines[1].split()
    assert row[0] == "1" and row[2] == "-" and " ".join(row[3:]) == "a cat in stripes style"
    assert -1.0 <= float(row[1]) <= 1.0
    assert lines[2].split()[0] == "mean" and lines[2].split()[1] == row[1] and lines[2].endswith("(1 prompts)")


@pytest.mark.parametrize("argv,message", [
    (["--prompts", "{missing}"], "cannot read --prompts '{missing}': no such file"),
    (["--prompts", "{empty}"], "--prompts {empty}: no prompts"),
    (["--prompts", "{prompts}", "--reference", "{prompts}"],
     "cannot use reference image '{prompts}': " + NOT_AN_ALLOWED_FORMAT),
    (["--prompts", "{prompts}", "--clip", "nonsense"], "--clip nonsense: CLIP model 'nonsense' is neither a preset"),
    (["--prompts", "{prompts}", "--steps", "0"], "--steps: must be between 1 and 100, got 0"),
])
def test_bad_arguments_name_the_bad_value_before_any_model_loads(
    tmp_path: Path, adapter_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    argv: list[str], message: str,
) -> None:
    def no_load(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr("trainer.model.load_base", no_load)
    monkeypatch.setattr("trainer.clip.load_clip", no_load)  # cli_eval imports it when it runs
    (tmp_path / "prompts.txt").write_text("a cat\n")
    (tmp_path / "empty.txt").write_text("# only a comment\n\n")
    fill = {"missing": str(tmp_path / "missing.txt"), "empty": str(tmp_path / "empty.txt"),
            "prompts": str(tmp_path / "prompts.txt")}
    with pytest.raises(SystemExit) as exit_:
        main(["eval", str(adapter_dir / "adapter"), *[a.format(**fill) for a in argv]])
    assert exit_.value.code == 2
    assert message.format(**fill) in capsys.readouterr().err


def test_eval_refuses_a_file_that_is_no_adapter(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "prompts.txt").write_text("a cat\n")
    (tmp_path / "fake.safetensors").write_text("not an adapter")
    with pytest.raises(SystemExit) as exit_:
        main(["eval", str(tmp_path / "fake.safetensors"), "--prompts", str(tmp_path / "prompts.txt")])
    assert exit_.value.code == 2
    assert f"adapter {tmp_path / 'fake.safetensors'}:" in capsys.readouterr().err


def test_render_candidates_gives_each_prompt_its_images_with_consecutive_seeds(engine_tiny_dir: Path) -> None:
    from trainer.evaluate import EvalSettings, render_candidates
    from trainer.model import load_base
    from trainer.sampler import GenerationRequest, sample

    parts = load_base(str(engine_tiny_dir))
    settings = EvalSettings(seed=3, steps=2, batch_size=3)  # batches of 3 cross the prompt boundary
    candidates = render_candidates(parts, ["a cat", "a house"], per_prompt=2, settings=settings)
    assert [c.prompt for c in candidates] == ["a cat", "a cat", "a house", "a house"]
    # Candidate i is the image `sample` makes alone for its prompt with seed 3 + i (decoding may round by a level).
    for i, c in enumerate(candidates):
        alone = sample(parts, [GenerationRequest(c.prompt, seed=3 + i, steps=2)])[0].image
        diff = np.abs(np.asarray(c.image, dtype=np.int16) - np.asarray(alone, dtype=np.int16))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01
    with pytest.raises(ValueError, match="per_prompt must be at least 1, got 0"):
        render_candidates(parts, ["a cat"], per_prompt=0)
