"""`styledrop train` / `generate` / `eval`: they work end to end on the tiny model, refuse bad input clearly (one
line, no traceback, before torch is imported), fail fast offline, print one loss, an ETA and the seed."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from storage.images import ImageRejected, normalize_upload
from storage.settings import Settings
from testkit.stack import free_port
from trainer.checkpoint import Checkpoint
from trainer.cli import CHECKPOINT_FILENAME, main
from trainer.contracts import limits
from trainer.contracts.images import NOT_AN_ALLOWED_FORMAT
from trainer.contracts.models import DEFAULT_CLIP, PRESETS
from trainer.lora import load_adapter
from trainer.model import load_base
from trainer.train import TrainConfig, train_style

REPO = Path(__file__).resolve().parents[1]
ENGINE_MODULES = ("torch", "diffusers", "transformers", "sqlalchemy", "celery")
# Runs `styledrop` (worker.cli:main, the console script's target) on each argv of argv[1] in one process and writes,
# per argv, its exit status and which engine/service modules were imported by then.
RUN_EACH = """
import json, sys
from worker.cli import main
seen = []
for argv in json.loads(sys.argv[1]):
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    seen.append([code, [m for m in json.loads(sys.argv[3]) if m in sys.modules]])
open(sys.argv[2], "w").write(json.dumps(seen))
"""


def run_each(tmp_path: Path, argvs: list[list[str]], then: str = "",
             **env: str) -> tuple[list[tuple[int, list[str]]], str]:
    """(exit status, engine modules imported) per argv, and the process's stderr; `then`: code run after them."""
    result = tmp_path / "result.json"
    environ = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **env}
    proc = subprocess.run([sys.executable, "-c", RUN_EACH + then, json.dumps(argvs), str(result),
                           json.dumps(ENGINE_MODULES)],
                          cwd=tmp_path, env=environ, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and result.exists(), proc.stderr
    return [(code, mods) for code, mods in json.loads(result.read_text())], proc.stderr


@pytest.fixture(scope="module")
def eval_adapter(tmp_path_factory: pytest.TempPathFactory, engine_tiny_dir: Path,
                 engine_style_image: Image.Image) -> Path:
    """A trained adapter (and its style image), for the commands that need one."""
    d = tmp_path_factory.mktemp("adapter")
    engine_style_image.save(d / "style.png")
    assert main(["train", str(d / "style.png"), "--descriptor", "stripes", "--model", str(engine_tiny_dir),
                 "--steps", "2", "--checkpoint-every", "0", "--out", str(d / "adapter")]) == 0
    return d


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
    (["generate", "a cat", "--steps", "abc", "--out", "o"], "--steps: expected an integer, got 'abc'"),
    (["generate", "a cat", "--text-guidance", "50", "--out", "o"], "--text-guidance: must be between -1 and 49"),
    (["generate", "a cat", "--mask", "{png}", "--out", "o"], "--mask needs --init-image"),
    (["train", "{txt}", "--descriptor", "x", "--out", "o"], "cannot use style image '{txt}': " + NOT_AN_ALLOWED_FORMAT),
    (["train", "missing.png", "--descriptor", "x", "--out", "o"], "cannot read style image 'missing.png': no such"),
    (["generate", "a cat", "--adapter", "{txt}", "--out", "o"], "--adapter {txt}"),
    (["train", "{small}", "--descriptor", "x", "--out", "o"],
     f"cannot use style image '{{small}}': the image is too small (48x300); the shorter side must be ≥ "
     f"{limits.MIN_IMAGE_SIDE}"),
    (["generate", "a cat", "--init-image", "{small}", "--out", "o"], "init image '{small}': the image is too small"),
    (["train", "{png}", "--out", "o"], '--descriptor is needed for a style, e.g. --descriptor "watercolor'),
    (["train", "{png}", "--descriptor", "x", "--caption", "a", "--caption", "b", "--out", "o"],
     "2 --caption for 1 image(s): at most one caption per image"),
    (["train", "{png}", "--descriptor", "x", "--caption", "c" * 501, "--out", "o"],
     f"--caption 1 {'c' * 40!r}…: at most {limits.MAX_CAPTION} characters, got 501"),
    (["train", "{png}", "--kind", "subject", "--out", "o"], "--kind subject needs --class-word"),
    (["train", "{png}", "--kind", "subject", "--class-word", "dog", "--caption", "x", "--out", "o"],
     "--caption is not for subjects: each subject photo trains on 'a photo of sks dog'"),
    (["train", "{png}", "--descriptor", "x", "--class-word", "dog", "--out", "o"],
     "--class-word is for --kind subject only"),
    (["train", "{png}", "--descriptor", "x", "--out", "{png}"], "--out '{png}' is a file, not a directory"),
])
def test_bad_arguments_name_the_bad_value(tmp_path: Path, style_png: Path, capsys: pytest.CaptureFixture[str],
                                          argv: list[str], message: str) -> None:
    txt = tmp_path / "notes.png"
    txt.write_text("not an image")  # a text file named .png
    small = tmp_path / "small.png"
    Image.new("RGB", (48, 300)).save(small)
    fill = {"png": str(style_png), "txt": str(txt), "small": str(small)}
    argv = [a.format(**fill) for a in argv]
    with pytest.raises(SystemExit) as exit_:
        main([*argv[:-1], str(tmp_path / argv[-1])])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message.format(**fill) in err and len(err.splitlines()) == 1, err  # one line, no usage or traceback
    assert not (tmp_path / "o").exists()


def test_the_cli_refuses_a_small_image_as_the_service_does(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """One size rule (contracts/images.py `too_small`, contracts/limits.py): what the CLI says is what the upload
    answers, at the service's default minimum."""
    small = tmp_path / "small.png"
    Image.new("RGB", (32, 32), (200, 10, 10)).save(small)
    with pytest.raises(ImageRejected) as refused:
        normalize_upload(small.read_bytes(), max_pixels=10**6, min_side=Settings().min_image_side)
    with pytest.raises(SystemExit):
        main(["train", str(small), "--descriptor", "x", "--out", str(tmp_path / "o")])
    assert capsys.readouterr().err.endswith(f": {refused.value.reason}\n")
    assert "32x32" in refused.value.reason and f"≥ {limits.MIN_IMAGE_SIDE}" in refused.value.reason
    Image.new("RGB", (64, 64)).save(small)  # the minimum itself is accepted by both
    assert normalize_upload(small.read_bytes(), max_pixels=10**6, min_side=Settings().min_image_side).width == 64


def test_the_cli_reads_only_the_formats_the_service_accepts(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """A BMP (or TIFF, ...) that Pillow could open is refused by the upload, so the CLI refuses it too, alike."""
    bmp = tmp_path / "style.bmp"
    Image.new("RGB", (96, 96), (10, 200, 10)).save(bmp, format="BMP")
    with pytest.raises(ImageRejected) as refused:
        normalize_upload(bmp.read_bytes(), max_pixels=10**6, min_side=Settings().min_image_side)
    with pytest.raises(SystemExit):
        main(["train", str(bmp), "--descriptor", "x", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert err.endswith(f"cannot use style image '{bmp}': {refused.value.reason}\n"), err
    assert "BMP" not in refused.value.reason and "PNG" in refused.value.reason and "Traceback" not in err


def test_a_mistyped_model_fails_at_once_listing_the_presets(tmp_path: Path, style_png: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "never"
    with pytest.raises(SystemExit) as exit_:
        main(["train", str(style_png), "--descriptor", "x", "--model", "tinyy", "--out", str(out)])
    assert exit_.value.code == 1  # the model-load failure status, as for an unreachable hub
    err = capsys.readouterr().err
    assert "unknown model 'tinyy'" in err and "amused-256" in err and "tiny-512" in err
    assert not out.exists()  # a failed model load leaves no empty --out directory


def test_train_prints_step_loss_eta_and_one_final_loss(tmp_path: Path, style_png: Path, engine_tiny_dir: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Plain lines when not a terminal: step/total, the loss, one rate, the ETA. The loss is one figure, the mean
    over the steps since the previous line; the final loss is the last line's, saying which steps it averages."""
    assert main(["train", str(style_png), "--descriptor", "x", "--model", str(engine_tiny_dir), "--steps", "40",
                 "--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    progress = re.findall(r"^train: step (\d+)/40, loss ([\d.]+), [\d.]+ steps/s, ETA (\d+s)$", err, re.M)
    assert [int(step) for step, _, _ in progress] == list(range(2, 41, 2))  # every ceil(40 / 20) steps
    assert progress[-1][2] == "0s" and all("\r" not in ln for ln in err.splitlines())
    loss_lines = [ln for ln in err.splitlines() if re.search(r"loss \d", ln)]
    assert len(loss_lines) == len(progress) + 1  # the progress lines and one final loss: no other loss figure
    (final,) = re.findall(r"^final loss ([\d.]+) \(the mean masked-token loss of steps 39-40\)$", err, re.M)
    assert final == progress[-1][1]
    assert float(progress[-1][1]) < float(progress[0][1])  # it learns: the figure is the loss training lowers
    with Image.open(style_png) as im:  # the same run through the engine: the figure is those steps' mean
        result = train_style(load_base(str(engine_tiny_dir)), [im.convert("RGB")], descriptor="x",
                             config=TrainConfig(steps=40))
    assert final == f"{np.mean(result.losses[-2:]):.4f}"


def test_generate_help_gives_the_engines_meaning_of_style_strength(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "-1 = no style, 0 = the adapter as trained" in text and "λB" in text and "fixes 5" in text


def test_help_and_argument_errors_do_not_import_the_engine(tmp_path: Path) -> None:
    """`styledrop --help`, a command's --help, argparse's errors and the files refused before the model loads answer
    without importing torch (nor the service's SQLAlchemy or Celery): they cost no engine start-up."""
    Image.new("RGB", (32, 32)).save(tmp_path / "small.png")
    Image.new("RGB", (64, 64)).save(tmp_path / "ok.png")
    argvs = [["--help"], ["train", "--help"], ["generate", "--help"], ["eval", "--help"], ["users", "--help"],
             ["train"], ["generate", "a cat", "--steps", "abc", "--out", "o"], ["nonsense"],
             ["train", "missing.png", "--descriptor", "x", "--out", "o"],
             ["train", "small.png", "--descriptor", "x", "--out", "o"],
             ["train", "ok.png", "--kind", "subject", "--out", "o"]]
    results, err = run_each(tmp_path, argvs)
    assert [code for code, _ in results] == [0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2]
    assert all(mods == [] for _, mods in results), results
    assert "Traceback" not in err and "the image is too small (32x32)" in err and "needs --class-word" in err


def test_an_unreachable_hub_fails_at_once_with_one_line_per_command(tmp_path: Path, engine_tiny_dir: Path,
                                                                    eval_adapter: Path) -> None:
    """No hub (a closed port as its address): `train` and `eval` each fail with one line naming the hub id and how to
    point at local weights, without retries; the hub's own warnings print once, not twice; and a model that is in
    the local cache loads from it."""
    (tmp_path / "prompts.txt").write_text("a cat in stripes style\n")
    cached = tmp_path / "hf" / "hub" / "models--me--tiny"  # the cache layout a download leaves (refs -> snapshot)
    shutil.copytree(engine_tiny_dir, cached / "snapshots" / ("ab" * 20))
    (cached / "refs").mkdir()
    (cached / "refs" / "main").write_text("ab" * 20)
    argvs = [["train", str(eval_adapter / "style.png"), "--descriptor", "x", "--out", "out"],
             ["eval", str(eval_adapter / "adapter"), "--prompts", "prompts.txt", "--model", str(engine_tiny_dir)],
             ["generate", "a cat", "--model", "me/tiny", "--steps", "1", "--seed", "3", "--out", "cached"]]
    warn = "import logging; logging.getLogger('huggingface_hub.utils._http').warning('a hub warning')\n"
    results, err = run_each(tmp_path, argvs, then=warn, HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="",
                            TRANSFORMERS_OFFLINE="", HF_ENDPOINT=f"http://127.0.0.1:{free_port()}")
    assert [code for code, _ in results] == [1, 1, 0]
    assert (tmp_path / "cached" / "000003.png").is_file()
    errors = [ln for ln in err.splitlines() if ln.startswith("styledrop: error:")]
    hub_id = PRESETS["amused-256"]
    assert len(errors) == 2 and "Traceback" not in err and "Retrying" not in err, err
    assert "--model amused-256: the Hugging Face hub cannot be reached" in errors[0]
    assert f"'{hub_id}' is not in the local cache" in errors[0] and "--model DIR" in errors[0]
    assert f"`hf download {hub_id} --local-dir DIR`" in errors[0]
    assert f"--clip {DEFAULT_CLIP}: the Hugging Face hub cannot be reached" in errors[1] and "--clip DIR" in errors[1]
    assert err.count("a hub warning") == 1
    assert not (tmp_path / "out").exists()


def test_generate_prints_its_seed_and_the_seed_makes_the_same_images(tmp_path: Path, engine_tiny_dir: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    generate = ["generate", "a cat", "--model", str(engine_tiny_dir), "--steps", "2", "--num-images", "2"]
    assert main([*generate, "--out", str(tmp_path / "drawn")]) == 0  # no --seed: a random one, printed
    (seed,) = re.findall(r"^seed (\d+) \(image k: seed \+ k\): --seed \1 makes the same images again$",
                         capsys.readouterr().err, re.M)
    assert main([*generate, "--seed", seed, "--out", str(tmp_path / "again")]) == 0
    names = [f"{int(seed):06d}.png", f"{int(seed) + 1:06d}.png"]
    assert sorted(p.name for p in (tmp_path / "drawn").iterdir()) == sorted(names)
    for name in names:
        with Image.open(tmp_path / "drawn" / name) as a, Image.open(tmp_path / "again" / name) as b:
            assert np.array_equal(np.asarray(a), np.asarray(b))


def test_captions_and_subjects_reach_training(tmp_path: Path, style_png: Path, engine_tiny_dir: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """As the service's upload: a --caption is its image's training prompt (the default prompt as a caption trains
    exactly what no caption does; another caption trains something else), and --kind subject trains on
    "a photo of sks <class word>", its descriptor defaulting to the class word."""
    def train(name: str, *extra: str) -> dict[str, torch.Tensor]:
        assert main(["train", str(style_png), "--model", str(engine_tiny_dir), "--steps", "4", "--checkpoint-every",
                     "0", "--out", str(tmp_path / name), *extra]) == 0
        return load_adapter(tmp_path / name).tensors

    plain = train("plain", "--descriptor", "stripes", "--content", "a grid")
    same = train("same", "--descriptor", "stripes", "--content", "a grid", "--caption", "a grid in stripes style")
    other = train("other", "--descriptor", "stripes", "--content", "a grid", "--caption", "a red fox in the snow")
    assert all(torch.equal(same[k], plain[k]) for k in plain)
    assert not all(torch.equal(other[k], plain[k]) for k in plain)
    assert f"  {style_png}: 'a red fox in the snow'" in capsys.readouterr().err

    train("dog", "--kind", "subject", "--class-word", "dog")
    meta = load_adapter(tmp_path / "dog").meta
    assert (meta.train_prompt, meta.descriptor) == ("a photo of sks dog", "dog")
