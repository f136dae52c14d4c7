"""`styledrop train` / `styledrop generate`: they work end to end on the tiny model and refuse bad input clearly."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image

from trainer.checkpoint import Checkpoint
from trainer.cli import CHECKPOINT_FILENAME, main
from trainer.lora import load_adapter
from trainer.model import load_base
from trainer.train import TrainConfig, train_style


@pytest.fixture
def style_png(tmp_path: Path, engine_style_image: Image.Image) -> Path:
    path = tmp_path / "style.png"
    engine_style_image.resize((320, 256)).save(path)
    return path


def test_train_then_generate_with_the_adapter(tmp_path: Path, style_png: Path, engine_tiny_dir: Path) -> None:
    out = tmp_path / "adapter"
    assert main(["train", str(style_png), "--descriptor", "stripes", "--content", "a grid", "--model",
                 str(engine_tiny_dir), "--steps", "6", "--checkpoint-every", "2", "--out", str(out)]) == 0
    adapter = load_adapter(out)
    assert adapter.meta.train_prompt == "a grid in stripes style" and adapter.meta.steps == 6
    assert not (out / "checkpoint.safetensors").exists()  # removed once the adapter is written

    images = tmp_path / "images"
    assert main(["generate", "a cat in stripes style", "--adapter", str(out), "--model", str(engine_tiny_dir),
                 "--num-images", "2", "--steps", "3", "--seed", "7", "--out", str(images)]) == 0
    files = sorted(p.name for p in images.iterdir())
    assert files == ["000007.png", "000008.png"]
    with Image.open(images / files[0]) as im:
        assert im.size == (256, 256)


def test_resume_continues_from_the_checkpoint(tmp_path: Path, style_png: Path, engine_tiny_dir: Path) -> None:
    """`--resume` picks up OUT/checkpoint.safetensors: from step 4 it ends with the adapter of an uninterrupted run;
    from the same weights labelled step 5 it runs one step less and ends elsewhere (so it did not start over)."""
    train = ["train", str(style_png), "--descriptor", "stripes", "--model", str(engine_tiny_dir), "--steps", "6",
             "--checkpoint-every", "2"]
    assert main([*train, "--out", str(tmp_path / "whole")]) == 0
    whole = load_adapter(tmp_path / "whole").tensors
    # The checkpoints an interrupted run leaves: the CLI's defaults are TrainConfig's.
    checkpoints: list[Checkpoint] = []
    with Image.open(style_png) as im:
        image = im.copy()
    train_style(load_base(str(engine_tiny_dir)), [image], descriptor="stripes",
                config=TrainConfig(steps=6, checkpoint_every=2), on_checkpoint=checkpoints.append)
    at_4 = next(c for c in checkpoints if c.step == 4)
    for label, step in (("from4", 4), ("from5", 5)):
        out = tmp_path / label
        out.mkdir()
        (out / CHECKPOINT_FILENAME).write_bytes(replace(at_4, step=step).to_bytes())
        assert main([*train, "--resume", "--out", str(out)]) == 0
        assert not (out / CHECKPOINT_FILENAME).exists()  # removed once the adapter is written
    resumed, shorter = load_adapter(tmp_path / "from4").tensors, load_adapter(tmp_path / "from5").tensors
    assert resumed.keys() == whole.keys() and all(torch.equal(resumed[k], whole[k]) for k in whole)
    assert not all(torch.equal(shorter[k], whole[k]) for k in whole)
    with pytest.raises(SystemExit) as exit_:  # nothing to resume from
        main([*train, "--resume", "--out", str(tmp_path / "empty")])
    assert exit_.value.code == 2


@pytest.mark.parametrize("argv,message", [
    (["generate", "a cat", "--style-strength", "20", "--out", "o"], "--style-strength: must be between -1 and 10"),
    (["generate", "a cat", "--steps", "abc", "--out", "o"], "expected a int, got 'abc'"),
    (["generate", "a cat", "--text-guidance", "50", "--out", "o"], "--text-guidance: must be between -1 and 49"),
    (["generate", "a cat", "--mask", "{png}", "--out", "o"], "--mask needs --init-image"),
    (["train", "{txt}", "--descriptor", "x", "--out", "o"], "cannot read style image '{txt}'"),
    (["train", "missing.png", "--descriptor", "x", "--out", "o"], "cannot read style image 'missing.png': no such"),
    (["generate", "a cat", "--adapter", "{txt}", "--out", "o"], "--adapter {txt}"),
])
def test_bad_arguments_name_the_bad_value(tmp_path: Path, style_png: Path, capsys: pytest.CaptureFixture[str],
                                          argv: list[str], message: str) -> None:
    txt = tmp_path / "notes.png"
    txt.write_text("not an image")  # a text file named .png
    fill = {"png": str(style_png), "txt": str(txt)}
    argv = [a.format(**fill) for a in argv]
    with pytest.raises(SystemExit) as exit_:
        main([*argv[:-1], str(tmp_path / argv[-1])])
    assert exit_.value.code == 2
    assert message.format(**fill) in capsys.readouterr().err


def test_a_mistyped_model_fails_at_once_listing_the_presets(tmp_path: Path, style_png: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "never"
    with pytest.raises(SystemExit) as exit_:
        main(["train", str(style_png), "--descriptor", "x", "--model", "tinyy", "--out", str(out)])
    assert exit_.value.code == 1  # the model-load failure status, as for an unreachable hub
    err = capsys.readouterr().err
    assert "unknown model 'tinyy'" in err and "amused-256" in err and "tiny-512" in err
    assert not out.exists()  # a failed model load leaves no empty --out directory


def test_progress_is_plain_lines_with_one_rate_when_not_a_terminal(tmp_path: Path, style_png: Path,
                                                                   engine_tiny_dir: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", str(style_png), "--descriptor", "x", "--model", str(engine_tiny_dir), "--steps", "10",
                 "--out", str(tmp_path / "a")]) == 0
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("train: ")]
    assert lines and lines[-1].startswith("train: 10/10 steps,")
    assert all("\r" not in ln and ln.count("steps/s") == 1 for ln in lines)


def test_generate_help_gives_the_engines_meaning_of_style_strength(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "-1 = no style, 0 = the adapter as trained" in text and "λB" in text and "fixes 5" in text
