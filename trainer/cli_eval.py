"""`styledrop eval ADAPTER --prompts FILE`: the StyleDrop paper's two CLIP metrics for an adapter, from a terminal.

    styledrop eval out/ --prompts prompts.txt --reference style.png [--clip tiny|DIR|hub-id] [--json]

One image per prompt (seeds --seed, --seed+1, ...), a progress bar with the running means on stderr, then a table
(or JSON with --json) on stdout. Bad arguments are reported before any model is loaded (or torch imported),
naming the bad value; a model that cannot be loaded (an offline hub included) is one line, as for `train` and
`generate` (trainer/cli.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .cli_args import (
    CliError,
    add_guidance_args,
    add_model_args,
    load_base_with,
    load_from_hub_or_cache,
    progress,
    ranged,
    read_image,
)
from .contracts import limits
from .contracts.models import DEFAULT_CLIP

if TYPE_CHECKING:
    from .evaluate import EvalReport


def add_eval_command(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    e = sub.add_parser("eval", help="score an adapter with the StyleDrop paper's CLIP text and style scores",
                       description="Generate one image per prompt with an adapter and print the CLIP text score "
                                   "(image vs prompt) and CLIP style score (image vs --reference images).")
    e.add_argument("adapter", metavar="ADAPTER", help="adapter.safetensors or a directory holding it")
    e.add_argument("--prompts", required=True, type=Path, metavar="FILE",
                   help="text file, one prompt per line (blank lines and # comments skipped)")
    e.add_argument("--reference", nargs="+", default=[], metavar="IMG",
                   help="style reference image(s); without them only the text score is computed")
    e.add_argument("--clip", default=DEFAULT_CLIP,
                   help=f"tiny (offline test model), a local directory or a hub id (default {DEFAULT_CLIP})")
    e.add_argument("--clip-revision", default=None, help="hub revision of the CLIP model")
    e.add_argument("--json", action="store_true", help="print JSON instead of a table")
    e.add_argument("--out", type=Path, default=None, help="also save the images in this directory")
    add_guidance_args(e)
    e.add_argument("--seed", type=ranged(int, limits.MIN_SEED, limits.MAX_SEED), default=0,
                   help="seed of the first prompt (+1 each)")
    e.add_argument("--steps", type=ranged(int, 1, 100), default=12)
    e.add_argument("--batch-size", type=ranged(int, 1, 64), default=4, help="prompts per sampling batch")
    add_model_args(e, None)
    e.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    # Everything a user can get wrong is checked before the (slow) model loads.
    try:
        prompts_text = args.prompts.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CliError(f"cannot read --prompts '{args.prompts}': no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read --prompts '{args.prompts}': {exc}") from None
    from .evaluate import parse_prompts

    prompts = parse_prompts(prompts_text)
    if not prompts:
        raise CliError(f"--prompts {args.prompts}: no prompts (one per line; blank lines and # comments skipped)")
    references = [read_image(p, "reference image") for p in args.reference]
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise CliError(f"--out '{args.out}' is a file, not a directory")

    from .clip import load_clip, resolve_clip_source
    from .evaluate import EvalSettings, evaluate
    from .lora import AdapterError, load_adapter
    from .model import ModelLoadError

    try:
        adapter = load_adapter(args.adapter)
    except AdapterError as exc:
        raise CliError(f"adapter {args.adapter}: {exc}") from None
    try:
        clip_source = resolve_clip_source(args.clip)  # a --clip that names nothing fails now, not after the base
    except ModelLoadError as exc:
        raise CliError(f"--clip {args.clip}: {exc}") from None
    parts, slot = load_base_with(args, adapter, f"adapter {args.adapter}")
    clip = load_from_hub_or_cache(
        "--clip", args.clip, clip_source, revision=args.clip_revision,
        load=lambda local: load_clip(args.clip, revision=args.clip_revision, device=parts.device, dtype=parts.dtype,
                                     local_files_only=local))
    settings = EvalSettings(adapter=slot, seed=args.seed, steps=args.steps, style_strength=args.style_strength,
                            guidance_scale=args.guidance_scale, batch_size=args.batch_size)
    bar = progress(len(prompts), "eval", unit="image")

    def on_batch(done: int, total: int, report: EvalReport) -> None:
        style = report.mean_style_score
        bar.set_postfix(text=f"{report.mean_text_score:.4f}", style="-" if style is None else f"{style:.4f}")
        bar.update(done - bar.n)

    try:
        report = evaluate(parts, clip, prompts, references=references, settings=settings, on_batch=on_batch)
    except ValueError as exc:  # SamplingError included
        raise CliError(str(exc)) from None
    finally:
        bar.close()
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        for row, image in zip(report.rows, report.images, strict=True):
            image.save(args.out / f"{row.seed:06d}.png")
    if args.json:
        sys.stdout.write(report.to_json(adapter=str(args.adapter), model=parts.model_id, clip=args.clip,
                                        references=list(args.reference), steps=args.steps, seed=args.seed,
                                        style_strength=args.style_strength, guidance_scale=args.guidance_scale)
                         + "\n")
    else:
        sys.stdout.write(report.to_table())
    return 0
