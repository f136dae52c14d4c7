"""What the engine's commands (`trainer/cli.py`, `trainer/cli_eval.py`) share: the user-facing error, argument
parsers and groups, image reading, progress output and loading a model (the hub, or the local cache when the hub
cannot be reached) with an adapter.

Nothing here imports torch, Pillow or the model code at import time: they are imported inside the functions that
need them, so `styledrop --help` and argument errors answer at once (tests/test_engine_cli.py checks it).
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from .contracts import limits

if TYPE_CHECKING:
    from PIL import Image

    from .lora import Adapter
    from .model import AmusedParts

T = TypeVar("T")


class CliError(Exception):
    """A user-facing error: printed as `styledrop: error: <message>` (one line, no traceback), exit `status`:
    2 for a bad argument or input file, 1 for a model that cannot be loaded."""

    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.status = status


class Parser(argparse.ArgumentParser):
    """argparse with its errors on one line: the bad value and where to read more, not the usage block of every
    option above it. Subcommands' parsers are of this class too (`add_subparsers` takes the parent's class)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def ranged(kind: Callable[[str], float | int], lo: float, hi: float) -> Callable[[str], float | int]:
    def parse(text: str) -> float | int:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
                                             ) from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be between {lo:g} and {hi:g}, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


def read_image(path: str, what: str = "image", *, mask: bool = False, min_side: int | None = None) -> Image.Image:
    """The file as the models take it: the engine's one image rule (contracts/images.py), applied here so that a
    file it refuses is named before the model loads. `min_side`: the service's size rule for training and init
    images (`contracts.images.too_small`)."""
    from PIL import Image, UnidentifiedImageError

    from .contracts.images import ALLOWED_FORMATS, NOT_AN_ALLOWED_FORMAT, ImageModeError, to_mask, to_rgb, too_small

    try:
        with Image.open(path, formats=list(ALLOWED_FORMATS)) as im:
            im.load()
            image = to_mask(im) if mask else to_rgb(im)
    except FileNotFoundError:
        raise CliError(f"cannot read {what} '{path}': no such file") from None
    except IsADirectoryError:
        raise CliError(f"cannot read {what} '{path}': a directory, not an image file") from None
    except ImageModeError as exc:
        raise CliError(f"cannot use {what} '{path}': {exc}") from None
    except UnidentifiedImageError:
        raise CliError(f"cannot use {what} '{path}': {NOT_AN_ALLOWED_FORMAT}") from None
    except (OSError, Image.DecompressionBombError) as exc:
        raise CliError(f"cannot read {what} '{path}': not a readable image ({exc})") from None
    if min_side is not None and (problem := too_small(*image.size, min_side)) is not None:
        raise CliError(f"cannot use {what} '{path}': {problem}")
    return image


def device_and_dtype(args: argparse.Namespace) -> tuple[str, Any]:
    from .model import resolve_device, resolve_dtype

    try:
        return resolve_device(args.device), resolve_dtype(args.dtype)
    except ValueError as exc:
        raise CliError(f"--{exc}") from None


def add_model_args(p: argparse.ArgumentParser, default: str | None) -> None:
    from .contracts.models import DEFAULT_MODEL, PRESETS, TINY, TINY_512

    names = ", ".join([*PRESETS, f"{TINY} / {TINY_512} (offline test models)"])
    p.add_argument("--model", default=default,
                   help=f"{names}, a hub id or a local directory (a download of the hub repository)"
                        + (f" (default {default})" if default else
                           f" (default: the adapter's base, else {DEFAULT_MODEL})"))
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


def duration(seconds: float) -> str:
    """A short duration for progress lines: 42s, 3m05s, 1h02m; "?" when unknown."""
    if not math.isfinite(seconds):
        return "?"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class PlainProgress:
    """Progress for logs and pipes: a plain line every ~10% with the count, one rate and the ETA, instead of tqdm's
    carriage returns."""

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
            eta = (self.total - self.n) / rate if rate > 0 else math.inf
            sys.stderr.write(f"{self.desc}: {self.n}/{self.total} {self.unit}s, {rate:.2f} {self.unit}s/s, "
                             f"ETA {duration(eta)}{self.postfix}\n")
            while self._next <= self.n:
                self._next += max(self.total // 10, 1)

    def set_postfix(self, **values: str) -> None:
        """Shown from the next line on: call it before `update`."""
        self.postfix = "".join(f", {k} {v}" for k, v in values.items())

    def close(self) -> None:
        pass


def progress(total: int, desc: str, unit: str = "step"):  # type: ignore[no-untyped-def]
    """A tqdm bar (count, rate, ETA) on a terminal; plain progress lines when stderr goes to a file or pipe."""
    if not sys.stderr.isatty():
        return PlainProgress(total, desc, unit)
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True)


# --- loading models -------------------------------------------------------------------------------------------


def _quiet_hub() -> None:
    """The hub's warnings once, through the root logger: huggingface_hub adds a handler of its own to its logger
    (huggingface_hub/utils/logging.py) and propagates too, which printed each retry warning twice. No deprecation
    warning the user cannot act on (diffusers passes huggingface_hub an argument it no longer reads), and no
    loading bars when stderr is not a terminal."""
    from huggingface_hub.utils import logging as hub_logging

    hub = hub_logging.get_logger()  # the library's root logger, with the handler it added on import
    for handler in list(hub.handlers):
        hub.removeHandler(handler)
    warnings.filterwarnings("ignore", message="The `local_dir_use_symlinks` argument is deprecated")
    if not sys.stderr.isatty():  # logs and pipes: no carriage-return bars of the libraries' loading steps
        from huggingface_hub.utils import disable_progress_bars
        from transformers.utils import logging as transformers_logging

        disable_progress_bars()
        transformers_logging.disable_progress_bar()


@functools.cache
def hub_unreachable() -> str | None:
    """Why the Hugging Face hub cannot be reached, or None when it answers: one request with the hub's own etag
    timeout (HF_HUB_ETAG_TIMEOUT) and no retries, instead of the retries with backoff of each file a load asks for
    (most of a minute offline). HF_HUB_OFFLINE=1 answers without a request."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    if constants.is_offline_mode():
        return "HF_HUB_OFFLINE is set"
    try:
        get_session().head(constants.ENDPOINT, timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except Exception as exc:  # any failure to get an answer (DNS, refused, TLS, proxy) is "unreachable"
        return f"{constants.ENDPOINT}: {exc or type(exc).__name__}"
    return None


def load_from_hub_or_cache(option: str, name: str, source: str, load: Callable[[bool | None], T],
                           revision: str | None = None) -> T:
    """`load(local_files_only)` for model `name` (which `source` is on the hub, or a local directory), named in
    errors by its `option`: the hub when it answers, else the local cache (HF_HOME) at once; a model that is in
    neither fails with one line that says how to point at local weights (exit status 1)."""
    from .model import ModelLoadError

    _quiet_hub()
    offline = None if Path(source).is_dir() else hub_unreachable()
    try:
        return load(True if offline else None)
    except ModelLoadError as exc:
        if offline is None:  # the message names the model and how to use a local copy (trainer/model.py)
            raise CliError(str(exc), status=1) from None
    from huggingface_hub import constants

    at = f" --revision {revision}" if revision else ""
    raise CliError(
        f"{option} {name}: the Hugging Face hub cannot be reached ({offline}) and '{source}' is not in the local "
        f"cache ({constants.HF_HUB_CACHE}). Download it where the hub is reachable (`hf download {source}{at} "
        f"--local-dir DIR`), copy DIR here and pass {option} DIR; or use {option} tiny, the offline test model.",
        status=1)


def load_model(args: argparse.Namespace, model: str) -> AmusedParts:
    """The base model `model` with the command's --revision/--variant/--device/--dtype, or a CliError."""
    from .model import ModelLoadError, load_base, resolve_source

    device, dtype = device_and_dtype(args)
    try:
        source = resolve_source(model)  # a typo fails here, listing the presets; `tiny` is built once
    except ModelLoadError as exc:
        raise CliError(str(exc), status=1) from None
    return load_from_hub_or_cache(
        "--model", model, source, revision=args.revision,
        load=lambda local: load_base(model, revision=args.revision, variant=args.variant, device=device,
                                     dtype=dtype, local_files_only=local))


def load_base_with(args: argparse.Namespace, adapter: Adapter | None, what: str) -> tuple[AmusedParts, str | None]:
    """The base model (--model, else the adapter's base, else amused-256) with `adapter` resident; its name."""
    from .bank import LoraBank
    from .contracts.models import DEFAULT_MODEL
    from .lora import AdapterError

    parts = load_model(args, args.model or (adapter.meta.base_model if adapter else DEFAULT_MODEL))
    if adapter is None:
        return parts, None
    bank = LoraBank(parts.transformer, 1, rank=adapter.meta.rank, targets=adapter.meta.targets)
    try:
        bank.load(1, adapter, name="adapter")
    except AdapterError as exc:
        raise CliError(f"{what}: {exc}") from None
    return parts, "adapter"
