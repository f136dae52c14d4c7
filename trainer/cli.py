"""`styledrop train`, `styledrop generate` and `styledrop eval`: the engine from a terminal, no service needed.

    styledrop train style.png --descriptor "watercolor painting" --content "a mushroom" --model tiny --out out/
    styledrop generate "a cat in watercolor painting style" --adapter out/ --style-strength 1.5 --out images/
    styledrop eval out/ --prompts prompts.txt --reference style.png --clip tiny --json

Bad arguments and unreadable files are reported before any model is loaded, naming the bad value.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from .cli_args import (
    CliError,
    add_guidance_args,
    add_model_args,
    device_and_dtype,
    load_base_with,
    progress,
    ranged,
    read_image,
)
from .cli_eval import add_eval_command
from .contracts import limits

logger = logging.getLogger(__name__)

CHECKPOINT_FILENAME = "checkpoint.safetensors"


def add_engine_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    t = sub.add_parser("train", help="train a StyleDrop adapter from style image(s)",
                       description="Train a StyleDrop LoRA adapter for aMUSEd from one (or a few) style images.")
    t.add_argument("images", nargs="+", metavar="IMAGE", help="style reference image(s)")
    t.add_argument("--descriptor", required=True, help='style descriptor, e.g. "watercolor painting"')
    t.add_argument("--content", default=None, help='what the image shows, e.g. "a mushroom" (recommended)')
    t.add_argument("--out", required=True, type=Path, help="directory for adapter.safetensors and checkpoints")
    add_model_args(t, "amused-256")
    t.add_argument("--steps", type=ranged(int, 1, 100_000), default=limits.DEFAULT_TRAIN_STEPS,
                   help=f"training steps (default {limits.DEFAULT_TRAIN_STEPS})")
    t.add_argument("--lr", type=ranged(float, 1e-7, 1.0), default=None, help="default: 4e-4 (256) / 1e-3 (512)")
    t.add_argument("--rank", type=ranged(int, 1, limits.MAX_RANK), default=16, help="LoRA rank (default 16)")
    t.add_argument("--alpha", type=ranged(float, 1e-3, 1e4), default=None, help="default: 32 (256) / 1 (512)")
    t.add_argument("--seed", type=ranged(int, 0, 2**63 - 1), default=0)
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
                       description="Generate images with aMUSEd, optionally with a StyleDrop adapter.")
    g.add_argument("prompt", help='e.g. "a cat in watercolor painting style"')
    g.add_argument("--out", required=True, type=Path, help="directory for the PNG files")
    g.add_argument("--adapter", default=None, help="adapter.safetensors or a directory holding it")
    add_guidance_args(g)
    g.add_argument("--text-guidance", type=ranged(float, limits.MIN_TEXT_GUIDANCE, limits.MAX_TEXT_GUIDANCE),
                   default=None, help="StyleDrop text guidance λB, overriding --guidance-scale "
                                      f"(the paper fixes {limits.PAPER_TEXT_GUIDANCE:g})")
    g.add_argument("--negative-prompt", default=None)
    g.add_argument("--seed", type=ranged(int, 0, 2**63 - 1), default=0)
    g.add_argument("--num-images", type=ranged(int, 1, 64), default=1)
    g.add_argument("--steps", type=ranged(int, limits.MIN_STEPS, limits.MAX_STEPS), default=limits.DEFAULT_STEPS)
    g.add_argument("--init-image", default=None, help="image-to-image / inpainting source")
    g.add_argument("--strength", type=ranged(float, 0.01, 1.0), default=None,
                   help=f"image-to-image strength (default {limits.DEFAULT_IMG2IMG_STRENGTH:g}; 1.0 repaints "
                        "everything)")
    g.add_argument("--mask", default=None, help="inpainting mask (white = repaint), same size as --init-image")
    add_model_args(g, None)
    g.set_defaults(func=cmd_generate)

    add_eval_command(sub)


def cmd_train(args: argparse.Namespace) -> int:
    images = [read_image(p, "style image") for p in args.images]  # before the (slow) model load
    if not args.descriptor.strip():
        raise CliError("--descriptor must not be empty")
    out: Path = args.out
    ckpt_path = out / CHECKPOINT_FILENAME
    if args.resume and not ckpt_path.exists():
        raise CliError(f"--resume: no checkpoint at '{ckpt_path}'")

    from .checkpoint import Checkpoint
    from .lora import save_adapter
    from .model import load_base
    from .train import TrainConfig, train_style

    device, dtype = device_and_dtype(args)
    parts = load_base(args.model, revision=args.revision, variant=args.variant, device=device, dtype=dtype)
    out.mkdir(parents=True, exist_ok=True)  # only once the model loaded: a failed load leaves no empty --out
    config = TrainConfig(steps=args.steps, learning_rate=args.lr, rank=args.rank, alpha=args.alpha, seed=args.seed,
                         optimizer=args.optimizer, mixed_precision=args.mixed_precision,
                         checkpoint_every=args.checkpoint_every, cuda_graph=args.cuda_graph)
    resume = Checkpoint.from_bytes(ckpt_path.read_bytes()) if args.resume else None
    bar = progress(args.steps, "train")
    bar.update(resume.step if resume else 0)

    def on_progress(p) -> None:  # type: ignore[no-untyped-def]
        bar.update(p.step - bar.n)
        bar.set_postfix(loss=f"{p.loss:.3f}")  # the bar shows the rate; one rate, not two

    def on_checkpoint(c: Checkpoint) -> None:
        tmp = ckpt_path.with_suffix(".tmp")
        tmp.write_bytes(c.to_bytes())
        tmp.replace(ckpt_path)

    try:
        result = train_style(parts, images, descriptor=args.descriptor, content=args.content, config=config,
                             resume=resume, on_progress=on_progress, on_checkpoint=on_checkpoint)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    finally:
        bar.close()
    assert result.adapter is not None
    path = save_adapter(result.adapter, out)
    ckpt_path.unlink(missing_ok=True)
    logger.info("wrote %s (prompt %r, final loss %.4f)", path, result.prompt, result.losses[-1] if result.losses
                else float("nan"))
    sys.stderr.write(f"adapter: {path}\ntraining prompt: {result.prompt}\n")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    init = read_image(args.init_image, "init image") if args.init_image else None
    mask = read_image(args.mask, "mask", mask=True) if args.mask else None
    if mask is not None and init is None:
        raise CliError("--mask needs --init-image")
    if args.strength is not None and init is None:
        raise CliError("--strength needs --init-image")
    if mask is not None and init is not None and mask.size != init.size:
        raise CliError(f"--mask is {mask.size[0]}x{mask.size[1]} but --init-image is {init.size[0]}x{init.size[1]}")

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
        GenerationRequest(args.prompt, negative_prompt=args.negative_prompt, seed=args.seed + i, adapter=slot,
                          style_strength=args.style_strength, guidance_scale=args.guidance_scale, steps=args.steps,
                          text_guidance=args.text_guidance, init_image=init, mask=mask,
                          strength=args.strength if args.strength is not None else (
                              limits.DEFAULT_INPAINT_STRENGTH if mask else limits.DEFAULT_IMG2IMG_STRENGTH))
        for i in range(args.num_images)
    ]
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
        path = args.out / f"{args.seed + i:06d}.png"
        r.image.save(path)
        sys.stderr.write(f"{path}\n")
    return 0


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run a parsed engine command, turning user errors into argparse-style messages (exit status 2)."""
    from .model import ModelLoadError

    try:
        return int(args.func(args))
    except CliError as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    except ModelLoadError as exc:
        parser.exit(1, f"{parser.prog}: error: {exc}\n")
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="styledrop")
    sub = parser.add_subparsers(dest="command", required=True)
    add_engine_commands(sub)
    args = parser.parse_args(argv)
    return run(args, parser)


if __name__ == "__main__":
    raise SystemExit(main())
