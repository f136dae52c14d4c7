"""One worker per GPU, wired on a CPU-only machine: which children `styledrop up --gpus 2` starts (with which
queue, --device and Celery node name), that `styledrop worker --device cuda:N` reaches the runtime's device, that
a dead per-GPU worker's rows are requeued at once, and the errors for bad values. CUDA itself: bench/gpu_check.sh."""

from __future__ import annotations

import signal
import socket
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest

from storage.blobs import blob_store_from_settings
from storage.db import make_engine, make_sessionmaker
from storage.models import TrainingJob
from storage.settings import get_settings
from tests.helpers.db import make_job
from worker import devices
from worker.cli import commands as cli


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    for var in ("DATABASE_URL", "BROKER_URL", "STYLEDROP_DATABASE_URL", "STYLEDROP_BROKER_URL",
                "STYLEDROP_DEVICE", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("STYLEDROP_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("STYLEDROP_RECONCILE_EVERY", "3600")
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}  # `up` installs its own
    get_settings.cache_clear()
    yield tmp_path / "data"
    for sig, handler in handlers.items():
        signal.signal(sig, handler)
    get_settings.cache_clear()


class FakeSupervisor:
    """Stands in for worker.ops.supervisor.Supervisor: records what `up` would start, then lets the test play a
    child's death through `on_exit`."""

    seen: ClassVar[dict[str, Any]] = {}
    play: ClassVar[Any] = None

    def __init__(self, commands: Mapping[str, Sequence[str]], *, on_exit: Any, **kw: Any) -> None:
        FakeSupervisor.seen = {"commands": {k: list(v) for k, v in commands.items()}, "on_exit": on_exit, **kw}

    def run(self, stop: threading.Event) -> int:
        FakeSupervisor.play(FakeSupervisor.seen["on_exit"])
        return 0


def test_up_with_two_gpus_starts_a_train_and_a_generate_worker_per_gpu(
    env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli, "Supervisor", FakeSupervisor)
    requeued: list[str] = []

    def play(on_exit: Any) -> None:  # train-cuda1 (pid 4242) dies holding a running job
        settings = get_settings()
        engine = make_engine(settings.resolved_database_url)
        rt = SimpleNamespace(session_factory=make_sessionmaker(engine), store=blob_store_from_settings(settings))
        job = make_job(rt, state="running", attempts=1, worker_host=f"{socket.gethostname()}:4242")
        monkeypatch.setattr("worker.ops.reconciler.dispatch", lambda s, kind, row_id, send: requeued.append(row_id))
        on_exit("generate-cuda0", 4343)  # another pid: nothing of its to requeue
        on_exit("train-cuda1", 4242)
        with rt.session_factory() as s:
            requeued.append(s.get(TrainingJob, job).state)
        engine.dispose()

    FakeSupervisor.play = play
    assert cli.main(["up", "--gpus", "2", "--port", "1"]) == 0
    commands = FakeSupervisor.seen["commands"]
    workers = {"train-cuda0", "generate-cuda0", "train-cuda1", "generate-cuda1"}
    assert set(commands) == {"api", "webhooks", *workers}
    assert not devices.is_worker("webhooks") and not devices.is_worker("api")  # their exits requeue nothing
    for name, argv in commands.items():
        if name not in workers:
            continue
        kind, gpu = name.split("-")
        args = cli.build_parser().parse_args(argv[argv.index("worker.cli") + 1:])
        assert (args.command, args.queue, args.device) == ("worker", kind, f"cuda:{gpu[-1]}")
    assert len(requeued) == 2 and requeued[1] == "queued"  # re-sent, and back in the queue at once

    # without --gpus: one of each on STYLEDROP_DEVICE, as before
    assert devices.worker_commands(None, "py") == {
        "train": ["py", "-m", "worker.cli", "worker", "--queue", "train"],
        "generate": ["py", "-m", "worker.cli", "worker", "--queue", "generate"],
    }


def test_worker_device_reaches_the_runtime_settings_and_the_node_name(
    env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker.celery_app import app

    started: list[list[str]] = []
    monkeypatch.setattr(app, "worker_main", lambda argv: started.append(list(argv)))  # Celery itself: not run here
    assert cli.main(["worker", "--queue", "generate", "--device", "cuda:1"]) == 0
    assert get_settings().device == "cuda:1"  # what Runtime.parts hands to trainer.resolve_device
    (argv,) = started
    assert argv[argv.index("-Q") + 1] == "generate"
    assert argv[argv.index("-n") + 1].startswith("generate-cuda1-") and argv[argv.index("-n") + 1].endswith("@%h")


def test_bad_devices_and_counts_are_refused_naming_the_value(capsys: pytest.CaptureFixture[str]) -> None:
    parser = cli.build_parser()
    for bad in ("gpu1", "cuda:x", "cuda:-1", ""):
        with pytest.raises(SystemExit):
            parser.parse_args(["worker", "--queue", "train", "--device", bad])
        assert f"{bad!r} is not a device" in capsys.readouterr().err
    for bad in ("0", "-2", "two"):
        with pytest.raises(SystemExit):
            parser.parse_args(["up", "--gpus", bad])
        assert f"{bad!r} is not a GPU count" in capsys.readouterr().err
    import torch

    beyond = torch.cuda.device_count()  # 0 here: the first index this process does not see
    with pytest.raises(ValueError, match=rf"device cuda:{beyond}: this process sees {beyond} GPU"):
        devices.bind(f"cuda:{beyond}")
    devices.bind("cpu")  # nothing to bind
