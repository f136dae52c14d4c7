"""One worker per GPU: the device a worker process is bound to, and the workers `styledrop up` starts.

`styledrop worker --queue train --device cuda:1` binds one worker process to one GPU: the flag becomes the
process's `STYLEDROP_DEVICE` (before the settings are read), which `Runtime.parts` hands to
`trainer.resolve_device`; `bind` then makes that GPU the process's current CUDA device, so nothing that allocates
on "the current device" (streams, CUDA graphs, the caching allocator) lands on GPU 0 behind its back. Indices
are those the process sees: with `CUDA_VISIBLE_DEVICES=2,3` set, `cuda:0` is the host's GPU 2.

`styledrop up --gpus N` starts a train and a generate worker for each of `cuda:0 … cuda:N-1` (named
`train-cuda0`, `generate-cuda0`, …), every one supervised, restarted and, when it dies, its rows requeued by its
`<hostname>:<pid>` as before. Without `--gpus` it starts one of each on `STYLEDROP_DEVICE`, as it always did.
"""

from __future__ import annotations

import argparse
import re
import sys

from storage.states import WorkKind

_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def device_arg(value: str) -> str:
    """argparse type of `--device`: auto, cpu, mps, cuda or cuda:N."""
    if not _DEVICE.fullmatch(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a device; use cuda:N (N from 0), cuda, cpu or auto")
    return value


def gpus_arg(value: str) -> int:
    """argparse type of `--gpus`: a count of GPUs, at least 1."""
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a GPU count; use a whole number from 1")
    return n


def worker_commands(gpus: int | None, python: str = sys.executable) -> dict[str, list[str]]:
    """The worker children of `styledrop up`: name → argv. One train and one generate worker on the configured
    device when `gpus` is None, else one of each per GPU, bound with `--device cuda:i`."""
    def command(kind: WorkKind, device: str | None) -> list[str]:
        return [python, "-m", "worker.cli", "worker", "--queue", kind.value,
                *(["--device", device] if device else [])]

    if gpus is None:
        return {kind.value: command(kind, None) for kind in (WorkKind.TRAIN, WorkKind.GENERATE)}
    return {f"{kind.value}-cuda{i}": command(kind, f"cuda:{i}")
            for i in range(gpus) for kind in (WorkKind.TRAIN, WorkKind.GENERATE)}


def is_worker(name: str) -> bool:
    """A child of `up` that runs jobs or generations (its rows are requeued at once when it exits)."""
    return name.split("-", 1)[0] in {k.value for k in WorkKind}


def node_name(queue: str, device: str | None, pid: int) -> str:
    """The Celery node name of a worker (`-n`): its queue, its device when bound to one, its pid, `@%h`."""
    tag = f"-{device.replace(':', '')}" if device else ""
    return f"{queue}{tag}-{pid}@%h"


def bind(device: str) -> None:
    """Make `device` (resolved, e.g. "cuda:1") the current CUDA device of this process; ValueError naming it when
    this process does not see such a GPU. Nothing to do for a CPU or a bare "cuda"."""
    if not device.startswith("cuda:"):
        return
    import torch

    index, count = int(device.split(":", 1)[1]), torch.cuda.device_count()
    if index >= count:
        raise ValueError(f"device {device}: this process sees {count} GPU(s) (cuda:0 … cuda:{count - 1}); check "
                         "--device / STYLEDROP_DEVICE and CUDA_VISIBLE_DEVICES")
    torch.cuda.set_device(index)
