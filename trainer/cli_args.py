"""What the engine's commands (`trainer/cli.py`, `trainer/cli_eval.py`) share: the user-facing error, argument
parsers and groups, image reading, progress output and loading the base with an adapter.

The model modules are imported inside the functions that need them, so `styledrop --help` and argument errors
answer without loading torch.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from PIL import Image, UnidentifiedImageError

from .contracts import limits
from .contracts.images import ImageModeError, to_mask, to_rgb

if TYPE_CHECKING:
    from .lora import Adapter
    from .model import AmusedParts


class CliError(Exception):
    """A user-facing error: printed as `styledrop: error: <message>`, exit status 2."""


def ranged(kind: Callable[[str], float | int], lo: float, hi: float) -> Callable[[str], float | int]:
    def parse(text: str) -> float | int:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be between {lo:g} and {hi:g}, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


def read_image(path: str, what: str = "image", *, mask: bool = False) -> Image.Image:
    """The file as the models take it: the engine's one image rule (contracts/images.py), applied here so that a
    file it refuses is named before the model loads."""
    try:
        with Image.open(path) as im:
            im.load()
            return to_mask(im) if mask else to_rgb(im)
    except FileNotFoundError:
        raise CliError(f"cannot read {what} '{path}': no such file") from None
    except ImageModeError as exc:
        raise CliError(f"cannot use {what} '{path}': {exc}") from None
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise CliError(f"cannot read {what} '{path}': not a readable image ({exc})") from None


def device_and_dtype(args: argparse.Namespace) -> tuple[str, Any]:
    from .model import resolve_device, resolve_dtype

    try:
        return resolve_device(args.device), resolve_dtype(args.dtype)
    except ValueError as exc:
        raise CliError(f"--{exc}") from None


def add_model_args(p: argparse.ArgumentParser, default: str | None) -> None:
    p.add_argument("--model", default=default,
                   help="amused-256, amused-512, tiny (offline test model), a hub id or a local directory"
                        + (f" (default {default})" if default else " (default: the adapter's base, else amused-256)"))
    p.add_argument("--revision", default=None, help="hub revision of the model")
    p.add_argument("--variant", default=None, choices=["fp16"], help="load the fp16 hub files")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ... (default auto)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                   help="U-ViT and text encoder dtype; the VQ-GAN always runs in float32")


def add_guidance_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--style-strength", type=ranged(float, limits.MIN_STYLE_STRENGTH, limits.MAX_STYLE_STRENGTH),
                   default=limits.DEFAULT_STYLE_STRENGTH,
                   help="StyleDrop style guidance λA: -1 = no style, 0 = the adapter as trained, higher = stronger "
                        f"(the paper uses 0-2; default {limits.DEFAULT_STYLE_STRENGTH:g})")
    p.add_argument("--guidance-scale", type=ranged(float, limits.MIN_GUIDANCE_SCALE, limits.MAX_GUIDANCE_SCALE),
                   default=limits.DEFAULT_GUIDANCE_SCALE,
                   help=f"classifier-free guidance g; text guidance λB = g - 1 (default "
                        f"{limits.DEFAULT_GUIDANCE_SCALE:g})")


class PlainProgress:
    """Progress for logs and pipes: a plain line every ~10% with one rate, instead of tqdm's carriage returns."""

    def __init__(self, total: int, desc: str, unit: str = "step") -> None:
        self.total, self.desc, self.unit, self.n = total, desc, unit, 0
        self._start = time.perf_counter()
        self._next = max(total // 10, 1)
        self.postfix = ""

    def update(self, k: int = 1) -> None:
        self.n += k
        if self.n >= self._next or self.n >= self.total:
            elapsed = time.perf_counter() - self._start
            rate = self.n / elapsed if elapsed > 0 else 0.0
            sys.stderr.write(f"{self.desc}: {self.n}/{self.total} {self.unit}s, {rate:.2f} {self.unit}s/s"
                             f"{self.postfix}\n")
            while self._next <= self.n:
                self._next += max(self.total // 10, 1)

    def set_postfix(self, **values: str) -> None:
        self.postfix = "".join(f", {k} {v}" for k, v in values.items())

    def close(self) -> None:
        pass


def progress(total: int, desc: str, unit: str = "step"):  # type: ignore[no-untyped-def]
    """A tqdm bar on a terminal; plain progress lines when stderr goes to a file or pipe."""
    if not sys.stderr.isatty():
        return PlainProgress(total, desc, unit)
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True)


def load_base_with(args: argparse.Namespace, adapter: Adapter | None, what: str) -> tuple[AmusedParts, str | None]:
    """The base model (--model, else the adapter's base, else amused-256) with `adapter` resident; its name."""
    from .bank import LoraBank
    from .lora import AdapterError
    from .model import load_base

    model = args.model or (adapter.meta.base_model if adapter else "amused-256")
    device, dtype = device_and_dtype(args)
    parts = load_base(model, revision=args.revision, variant=args.variant, device=device, dtype=dtype)
    if adapter is None:
        return parts, None
    bank = LoraBank(parts.transformer, 1, rank=adapter.meta.rank, targets=adapter.meta.targets)
    try:
        bank.load(1, adapter, name="adapter")
    except AdapterError as exc:
        raise CliError(f"{what}: {exc}") from None
    return parts, "adapter"
