"""`styledrop train`, `styledrop generate` and `styledrop eval`: the engine from a terminal, no service needed.

    styledrop train style.png --descriptor "watercolor painting" --content "a mushroom" --model tiny --out out/
    styledrop train a.png b.png --descriptor "flat vector art" --caption "a fox in flat vector art style" --out out/
    styledrop train dog1.jpg dog2.jpg --kind subject --class-word dog --out dog/
    styledrop generate "a cat in watercolor painting style" --adapter out/ --style-strength 1.5 --out images/
    styledrop eval out/ --prompts prompts.txt --reference style.png --clip tiny --json

Bad arguments and unreadable or refused files are reported before any model is loaded (before torch is even
imported), naming the bad value: one line `styledrop: error: ...`, exit status 2; a model that cannot be loaded
(an offline hub included) is one line too, exit status 1. Images follow the service's rules: the one image rule
(contracts/images.py) and its minimum size (contracts/limits.py MIN_IMAGE_SIDE).
"""

from __future__ import annotations

import argparse
import logging
import math
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .cli_args import (
    CliError,
    Parser,
    add_guidance_args,
    add_model_args,
    duration,
    load_base_with,
    load_model,
    progress,
    ranged,
    read_image,
)
from .cli_eval import add_eval_command
from .contracts import limits
from .contracts.models import DEFAULT_MODEL

if TYPE_CHECKING:
    from PIL import Image

    from .examples import TrainingExample
    from .train_runs import Progress

logger = logging.getLogger(__name__)

CHECKPOINT_FILENAME = "checkpoint.safetensors"
ENGINE_COMMANDS = frozenset({"train", "generate", "eval"})
# Engine progress reports (each one reads the losses back from the device) at most every this many steps, and
# about 20 over a run: the loss printed is the mean over the steps since the previous report.
REPORTS_PER_RUN = 20
# A seed `generate` draws when none is given: below the service's largest (storage/generation_settings.py MAX_SEED,
# a 32-bit column), so the printed seed can be given to the service as well.
RANDOM_SEEDS = 2**31


def seed_arg(text: str) -> int:
    return int(ranged(int, limits.MIN_SEED, limits.MAX_SEED)(text))


def add_engine_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    t = sub.add_parser(
        "train", help="train a StyleDrop adapter from style image(s), or a subject adapter from photos",
        description="Train a StyleDrop LoRA adapter for aMUSEd from one (or a few) style images, each optionally "
                    "with its own caption; or, with --kind subject, a subject adapter from photos of one subject. "
                    "The options mirror the service's upload (POST /v1/styles). Images must be at least "
                    f"{limits.MIN_IMAGE_SIDE} px on the shorter side, as in the service.")
    t.add_argument("images", nargs="+", metavar="IMAGE", help="style reference image(s), or the subject's photos")
    t.add_argument("--descriptor", default=None, help='the style in words, e.g. "watercolor painting" (required '
                   "for a style; a subject defaults to its class word)")
    t.add_argument("--content", default=None, help='what the image shows, e.g. "a mushroom" (recommended): the '
                   'training prompt is "<content> in <descriptor> style"')
    t.add_argument("--caption", action="append", default=[], metavar="TEXT",
                   help="a caption for one image, in the images' order (repeat it: the first --caption is the "
                        "first image's); an image without one (or with an empty one) trains on the StyleDrop "
                        f"prompt. At most {limits.MAX_CAPTION} characters. Not for subjects")
    t.add_argument("--kind", choices=["style", "subject"], default="style",
                   help='"subject": the images are photos of one subject, trained DreamBooth-style on "a photo of '
                        'sks <class word>"; mix it with a style when generating (default style)')
    t.add_argument("--class-word", default=None, help='what the subject is, e.g. "dog" (required for --kind '
                   f"subject; at most {limits.MAX_CLASS_WORD} characters)")
    t.add_argument("--out", required=True, type=Path, help="directory for adapter.safetensors and checkpoints")
    add_model_args(t, DEFAULT_MODEL)
    t.add_argument("--steps", type=ranged(int, 1, 100_000), default=limits.DEFAULT_TRAIN_STEPS,
                   help=f"training steps (default {limits.DEFAULT_TRAIN_STEPS})")
    t.add_argument("--lr", type=ranged(float, 1e-7, 1.0), default=None, help="default: 4e-4 (256) / 1e-3 (512)")
    t.add_argument("--rank", type=ranged(int, 1, limits.MAX_RANK), default=16, help="LoRA rank (default 16)")
    t.add_argument("--alpha", type=ranged(float, 1e-3, 1e4), default=None, help="default: 32 (256) / 1 (512)")
    t.add_argument("--seed", type=seed_arg, default=0, help="LoRA init, image choice and masking (default 0): the "
                   "same seed, images and options give the same adapter on a CPU")
    t.add_argument("--checkpoint-every", type=ranged(int, 0, 100_000), default=100,
                   help="write OUT/checkpoint.safetensors every N steps (0 = never)")
    t.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.safetensors")
    t.add_argument("--optimizer", choices=["adamw", "adamw8bit"], default="adamw",
                   help="adamw8bit needs CUDA and bitsandbytes")
    t.add_argument("--mixed-precision", choices=["no", "bf16", "fp16"], default="no", help="autocast on CUDA")
    t.add_argument("--cuda-graph", action="store_true", help="capture the training step as a CUDA graph (CUDA; "
                   "adamw with no or bf16 mixed precision)")
    t.set_defaults(func=cmd_train)

    g = sub.add_parser("generate", help="generate images, optionally in a trained style",
                       description="Generate images with aMUSEd, optionally with a StyleDrop adapter. The seed "
                                   "is printed; give it with --seed to make the same images again.")
    g.add_argument("prompt", help='e.g. "a cat in watercolor painting style"')
    g.add_argument("--out", required=True, type=Path, help="directory for the PNG files (named by their seed)")
    g.add_argument("--adapter", default=None, help="adapter.safetensors or a directory holding it")
    add_guidance_args(g)
    g.add_argument("--text-guidance", type=ranged(float, limits.MIN_TEXT_GUIDANCE, limits.MAX_TEXT_GUIDANCE),
                   default=None, help="StyleDrop text guidance λB, overriding --guidance-scale "
                                      f"(the paper fixes {limits.PAPER_TEXT_GUIDANCE:g})")
    g.add_argument("--negative-prompt", default=None)
    g.add_argument("--seed", type=seed_arg, default=None,
                   help="seed of the first image (+1 for each next one); default: a random one, printed")
    g.add_argument("--num-images", type=ranged(int, 1, 64), default=1)
    g.add_argument("--steps", type=ranged(int, limits.MIN_STEPS, limits.MAX_STEPS), default=limits.DEFAULT_STEPS)
    g.add_argument("--init-image", default=None, help="image-to-image / inpainting source (at least "
                   f"{limits.MIN_IMAGE_SIDE} px on the shorter side)")
    g.add_argument("--strength", type=ranged(float, 0.01, 1.0), default=None,
                   help=f"image-to-image strength (default {limits.DEFAULT_IMG2IMG_STRENGTH:g}; 1.0 repaints "
                        "everything)")
    g.add_argument("--mask", default=None, help="inpainting mask (white = repaint), same size as --init-image")
    add_model_args(g, None)
    g.set_defaults(func=cmd_generate)

    add_eval_command(sub)


# --- train ---------------------------------------------------------------------------------------------------------


def _text(option: str, value: str | None, most: int) -> str | None:
    """`value` stripped (None when empty), or a CliError naming it when it is longer than `most` characters."""
    text = (value or "").strip()
    if len(text) > most:
        raise CliError(f"{option} {text[:40]!r}…: at most {most} characters, got {len(text)}")
    return text or None


def _training_input(args: argparse.Namespace, images: list[Image.Image]) -> tuple[str, str | None,
                                                                                   list[TrainingExample] | None]:
    """(descriptor, subject prompt, examples) from the style/subject options, checked as the service's upload
    checks them (api/services/references.py): captions one per image at most, none for a subject; a subject needs
    its class word and defaults its descriptor to it. Examples are None for images under one prompt."""
    from .contracts.prompts import training_prompt
    from .examples import TrainingExample, subject_prompt

    class_word = _text("--class-word", args.class_word, limits.MAX_CLASS_WORD)
    captions = [_text(f"--caption {n + 1}", c, limits.MAX_CAPTION) for n, c in enumerate(args.caption)]
    if len(captions) > len(images):
        raise CliError(f"{len(captions)} --caption for {len(images)} image(s): at most one caption per image, in "
                       "the images' order")
    if args.kind == "subject":
        if class_word is None:
            raise CliError("--kind subject needs --class-word: what the subject is, e.g. --class-word dog")
        if args.caption:
            raise CliError("--caption is not for subjects: each subject photo trains on "
                           f"'{subject_prompt(class_word)}'")
    elif class_word is not None:
        raise CliError("--class-word is for --kind subject only")
    descriptor = (args.descriptor or "").strip() or class_word or ""
    if not descriptor:
        raise CliError("--descriptor is needed for a style, e.g. --descriptor \"watercolor painting\"")
    if class_word is not None:
        subject = subject_prompt(class_word)
        return descriptor, subject, [TrainingExample(im, subject) for im in images]
    if any(captions):
        default = training_prompt(descriptor, args.content)
        return descriptor, None, [TrainingExample(im, c or default) for im, c in
                                  zip(images, captions + [None] * (len(images) - len(captions)), strict=True)]
    return descriptor, None, None


def cmd_train(args: argparse.Namespace) -> int:
    images = [read_image(p, "style image", min_side=limits.MIN_IMAGE_SIDE) for p in args.images]  # before the model
    descriptor, subject, examples = _training_input(args, images)
    out: Path = args.out
    ckpt_path = out / CHECKPOINT_FILENAME
    if args.resume and not ckpt_path.exists():
        raise CliError(f"--resume: no checkpoint at '{ckpt_path}'")
    if out.exists() and not out.is_dir():
        raise CliError(f"--out '{out}' is a file, not a directory")

    from .checkpoint import Checkpoint, CheckpointError
    from .lora import save_adapter
    from .train import Callbacks, StyleSpec, TrainConfig, train_styles

    parts = load_model(args, args.model)
    out.mkdir(parents=True, exist_ok=True)  # only once the model loaded: a failed load leaves no empty --out
    every = max(1, min(TrainConfig.progress_every, math.ceil(args.steps / REPORTS_PER_RUN)))
    config = TrainConfig(steps=args.steps, learning_rate=args.lr, rank=args.rank, alpha=args.alpha, seed=args.seed,
                         optimizer=args.optimizer, mixed_precision=args.mixed_precision,
                         checkpoint_every=args.checkpoint_every, cuda_graph=args.cuda_graph, progress_every=every)
    try:
        resume = Checkpoint.from_bytes(ckpt_path.read_bytes()) if args.resume else None
    except CheckpointError as exc:
        raise CliError(f"--resume: '{ckpt_path}' is not a usable checkpoint ({exc})") from None
    spec = StyleSpec([] if examples else images, descriptor, args.content, prompt=subject, resume=resume,
                     examples=examples)
    reporter = TrainReporter(args.steps, resume.step if resume else 0)

    saved: list[int] = [resume.step] if resume else []

    def on_checkpoint(_i: int, c: Checkpoint) -> None:
        tmp = ckpt_path.with_suffix(".tmp")
        tmp.write_bytes(c.to_bytes())
        tmp.replace(ckpt_path)
        saved.append(c.step)

    def on_progress(_i: int, p: Progress) -> None:
        reporter.report(p)

    sys.stderr.write(f"training {args.steps} steps on {len(images)} image(s), seed {args.seed}\n")
    for path, example in zip(args.images, examples or [], strict=False):
        sys.stderr.write(f"  {path}: {example.caption!r}\n")  # each image's own caption (else the prompt below)
    try:
        (result,) = train_styles(parts, [spec], config, Callbacks(on_progress=on_progress,
                                                                   on_checkpoint=on_checkpoint))
    except ValueError as exc:  # a value the engine refuses (trainer/checks.py), named there
        raise CliError(str(exc)) from None
    except KeyboardInterrupt:
        where = (f"; '{ckpt_path}' holds step {saved[-1]}: continue with --resume" if saved else
                 " before the first checkpoint (--checkpoint-every)")
        raise CliError(f"interrupted{where}", status=130) from None
    finally:
        reporter.close()
    if isinstance(result.error, ValueError):
        raise CliError(str(result.error))
    if result.error is not None:
        raise result.error
    assert result.adapter is not None
    path = save_adapter(result.adapter, out)
    ckpt_path.unlink(missing_ok=True)
    sys.stderr.write(f"adapter: {path}\ntraining prompt: {result.prompt}\n")
    if reporter.last is not None:
        p = reporter.last
        steps = f"step {p.step}" if p.interval_start == p.step else f"steps {p.interval_start}-{p.step}"
        sys.stderr.write(f"final loss {p.interval_loss:.4f} (the mean masked-token loss of {steps})\n")
    return 0


class TrainReporter:
    """`styledrop train`'s progress: step/total, the loss, the rate and the ETA at each engine report, as a line
    (logs, pipes) or a tqdm bar (terminal). The loss is one figure throughout, `Progress.interval_loss`: the mean
    masked-token loss over the steps since the previous report; the final loss is the last report's."""

    def __init__(self, total: int, done: int) -> None:
        self.last: Progress | None = None
        self.bar = progress(total, "train") if sys.stderr.isatty() else None
        if self.bar is not None:
            self.bar.update(done)

    def report(self, p: Progress) -> None:
        self.last = p
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{p.interval_loss:.4f}")
            self.bar.update(p.step - self.bar.n)
            return
        sys.stderr.write(f"train: step {p.step}/{p.total}, loss {p.interval_loss:.4f}, "
                         f"{p.steps_per_second:.2f} steps/s, ETA {duration(p.eta_seconds)}\n")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# --- generate ------------------------------------------------------------------------------------------------------


def cmd_generate(args: argparse.Namespace) -> int:
    init = read_image(args.init_image, "init image", min_side=limits.MIN_IMAGE_SIDE) if args.init_image else None
    mask = read_image(args.mask, "mask", mask=True) if args.mask else None
    if mask is not None and init is None:
        raise CliError("--mask needs --init-image")
    if args.strength is not None and init is None:
        raise CliError("--strength needs --init-image")
    if mask is not None and init is not None and mask.size != init.size:
        raise CliError(f"--mask is {mask.size[0]}x{mask.size[1]} but --init-image is {init.size[0]}x{init.size[1]}")
    if args.out.exists() and not args.out.is_dir():
        raise CliError(f"--out '{args.out}' is a file, not a directory")
    seed = args.seed if args.seed is not None else secrets.randbelow(RANDOM_SEEDS)
    if seed + args.num_images - 1 > limits.MAX_SEED:
        raise CliError(f"--seed {seed} with --num-images {args.num_images}: the last image's seed would pass "
                       f"{limits.MAX_SEED}")

    from .lora import AdapterError, load_adapter
    from .sampler import GenerationRequest, SamplingError, sample

    adapter = None
    if args.adapter:
        try:
            adapter = load_adapter(args.adapter)
        except AdapterError as exc:
            raise CliError(f"--adapter {args.adapter}: {exc}") from None
    parts, slot = load_base_with(args, adapter, f"--adapter {args.adapter}")
    requests = [
        GenerationRequest(args.prompt, negative_prompt=args.negative_prompt, seed=seed + i, adapter=slot,
                          style_strength=args.style_strength, guidance_scale=args.guidance_scale, steps=args.steps,
                          text_guidance=args.text_guidance, init_image=init, mask=mask,
                          strength=args.strength if args.strength is not None else (
                              limits.DEFAULT_INPAINT_STRENGTH if mask else limits.DEFAULT_IMG2IMG_STRENGTH))
        for i in range(args.num_images)
    ]
    several = args.num_images > 1
    sys.stderr.write(f"seed {seed}{' (image k: seed + k)' if several else ''}: --seed {seed} makes the same "
                     f"image{'s' if several else ''} again\n")
    bar = progress(args.steps, "generate")
    try:
        results = sample(parts, requests, on_step=lambda done, total: bar.update(1))
    except SamplingError as exc:
        raise CliError(str(exc)) from None
    finally:
        bar.close()
    args.out.mkdir(parents=True, exist_ok=True)
    for i, r in enumerate(results):
        assert r.image is not None
        path = args.out / f"{seed + i:06d}.png"
        r.image.save(path)
        sys.stderr.write(f"{path}\n")
    return 0


# --- running a command ---------------------------------------------------------------------------------------------


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run a parsed engine command: a user error is one argparse-style line (no traceback) with its status, an
    interrupt one line with status 130."""
    try:
        return int(args.func(args))
    except CliError as exc:
        parser.exit(exc.status, f"{parser.prog}: error: {exc}\n")
    except KeyboardInterrupt:
        parser.exit(130, f"{parser.prog}: interrupted\n")
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = Parser(prog="styledrop")
    sub = parser.add_subparsers(dest="command", required=True)
    add_engine_commands(sub)
    args = parser.parse_args(argv)
    return run(args, parser)


if __name__ == "__main__":
    raise SystemExit(main())
