"""The `styledrop` command line (also `python -m worker.cli`).

    styledrop up [--model tiny] [--host H] [--port P] [--gpus N]
                                                        API + a train and a generate worker (per GPU) + reconciler
    styledrop worker --queue train|generate [--device cuda:N]
                                                        one Celery worker (--pool solo: one process per GPU)
    styledrop migrate                                   bring the database to the newest schema
    styledrop reconcile [--once]                        re-send lost messages, requeue jobs of dead workers
    styledrop webhooks                                  deliver webhook events (a child of `up`, or on its own)
    styledrop users create NAME [--admin]               prints the new API key once
    styledrop users list | keys | add-key | revoke-key | rotate-key | disable | enable   (worker/cli/users.py)
    styledrop train / generate / eval ...               the engine on its own (trainer/cli.py)

With no DATABASE_URL / BROKER_URL everything is embedded under STYLEDROP_DATA_DIR (default ./.styledrop): a SQLite
file, a blob directory and a file-system broker.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, TextIO

from trainer.cli import ENGINE_COMMANDS, add_engine_commands, run
from trainer.cli_args import Parser
from worker.cli.failures import existing_database, expected_failure
from worker.cli.users import add_users_commands
from worker.devices import device_arg, gpus_arg, is_worker, node_name, worker_commands
from worker.ops.supervisor import Supervisor  # stdlib only

if TYPE_CHECKING:
    from storage.settings import Settings

# Parsing a command line imports none of the service (SQLAlchemy, Celery, pydantic settings) nor the engine
# (torch): each command imports what it runs, so `--help` and argument errors answer at once
# (tests/test_engine_cli.py checks `sys.modules`).

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
STOP_GRACE_SECONDS = 15.0


def _setup_logging(stream: TextIO = sys.stdout, level: int = logging.INFO) -> None:
    logging.basicConfig(
        level=level, stream=stream,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _settings() -> Settings:
    from storage.settings import get_settings

    get_settings.cache_clear()
    return get_settings()


def _child_env(settings_data_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["STYLEDROP_DATA_DIR"] = str(settings_data_dir.resolve())
    env["PYTHONUNBUFFERED"] = "1"
    paths = [str(REPO_ROOT), *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


# --- up ----------------------------------------------------------------------------------------------------------


def cmd_up(args: argparse.Namespace) -> int:
    if args.model:
        os.environ["STYLEDROP_MODEL"] = args.model
    # The children get the address too (webhook bodies name it when STYLEDROP_PUBLIC_URL is unset); through their
    # environment, not this process's, which `up` run in-process (a test) would otherwise leave changed.
    address = {name: str(value) for name, value in (("STYLEDROP_HOST", args.host), ("STYLEDROP_PORT", args.port))
               if value}
    settings = _settings()
    from storage.db import make_engine, make_sessionmaker, upgrade_to_head
    from worker.ops import reconciler

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    url = settings.resolved_database_url
    upgrade_to_head(url)
    host = args.host or settings.host
    port = str(args.port or settings.port)
    commands = {
        # a bounded graceful shutdown: open event streams must not keep the port after a stop
        "api": [sys.executable, "-m", "uvicorn", "api.main:create_app", "--factory", "--host", host, "--port", port,
                "--timeout-graceful-shutdown", "5"],
        **worker_commands(args.gpus),  # a train and a generate worker, on each GPU with --gpus
        # receivers' answers are read here, never in this supervisor (worker/ops/webhook_pool.py)
        "webhooks": [sys.executable, "-m", "worker.cli", "webhooks"],
    }
    logger.info("data in %s, database %s, broker %s, model %s", settings.data_dir.resolve(),
                "sqlite (embedded)" if settings.database_url is None else "DATABASE_URL",
                "file system (embedded)" if settings.embedded_broker else "BROKER_URL", settings.model)
    stop, rec_stop = threading.Event(), threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        logger.info("signal %d: stopping", signum)
        rec_stop.set()  # no more wake-ups for workers that are draining; the next `up` sends them
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    engine = make_engine(url)
    factory = make_sessionmaker(engine)
    send = reconciler.celery_sender()

    def on_exit(name: str, pid: int) -> None:
        if is_worker(name):  # we saw it die: no need to wait for its heartbeat to go stale
            reconciler.requeue_dead_worker(factory, settings, f"{socket.gethostname()}:{pid}", send)

    supervisor = Supervisor(commands, env={**_child_env(settings.data_dir), **address}, on_exit=on_exit,
                            max_crashes=settings.restart_max_crashes, window=settings.restart_window_seconds,
                            stop_grace=STOP_GRACE_SECONDS)
    reconciler.start_thread(factory, settings, send=send, stop=rec_stop, deliver_webhooks=False)
    logger.info("API on http://%s:%s  (Ctrl-C stops everything)", host, port)
    try:
        return supervisor.run(stop)
    finally:
        rec_stop.set()
        engine.dispose()


# --- worker, migrate, reconcile ------------------------------------------------------------------------------------


def cmd_worker(args: argparse.Namespace) -> int:
    if args.device:  # bound to one device: the runtime resolves the model's device from the settings
        os.environ["STYLEDROP_DEVICE"] = args.device
    settings = _settings()
    # Imported here: importing worker.celery_app builds the Celery app from the settings of that moment (after
    # _settings() has re-read the environment) and connects the worker's signal handlers.
    from worker.celery_app import app

    argv = ["worker", "--pool", "solo", "-Q", args.queue, "-n", node_name(args.queue, args.device, os.getpid()),
            "--loglevel", args.loglevel]
    if settings.embedded_broker:  # the file-system transport has no broadcast: no gossip/mingle
        argv += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    app.worker_main(argv)
    return 0


def cmd_migrate(_args: argparse.Namespace) -> int:
    settings = _settings()
    from storage.db import upgrade_to_head

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade_to_head(settings.resolved_database_url)
    return 0


def cmd_reconcile(args: argparse.Namespace) -> int:
    settings = _settings()
    from storage.db import make_engine, make_sessionmaker
    from worker.ops import reconciler

    factory = make_sessionmaker(make_engine(existing_database(settings)))
    if args.once:
        report = reconciler.reconcile_once(factory, settings, reconciler.celery_sender(),
                                           depths=reconciler.broker_depths(settings))
        sys.stdout.write(f"{report}\n")
        return 1 if report.send_errors else 0
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with contextlib.suppress(KeyboardInterrupt):
        reconciler.run_forever(factory, settings, stop)
    return 0


def cmd_webhooks(_args: argparse.Namespace) -> int:
    settings = _settings()
    from storage.db import make_engine, make_sessionmaker
    from worker.ops import webhook_pool

    factory = make_sessionmaker(make_engine(existing_database(settings)))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with contextlib.suppress(KeyboardInterrupt):
        webhook_pool.run_forever(factory, settings, stop)
    return 0


# --- the parser ----------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="styledrop", description="StyleDrop adapters for aMUSEd, as a service.")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run migrations, the API, a train and a generate worker, and the reconciler")
    up.add_argument("--model", help="base model for the workers (sets STYLEDROP_MODEL), e.g. tiny or amused-256")
    up.add_argument("--host", help="API bind address (default STYLEDROP_HOST or 127.0.0.1)")
    up.add_argument("--port", type=int, help="API port (default STYLEDROP_PORT or 8000)")
    up.add_argument("--gpus", type=gpus_arg, help="start a train and a generate worker on each of cuda:0 … "
                    "cuda:N-1 (default: one of each on STYLEDROP_DEVICE)")
    up.set_defaults(func=cmd_up)

    worker = sub.add_parser("worker", help="run one Celery worker process (--pool solo)")
    worker.add_argument("--queue", choices=["train", "generate"], required=True)
    worker.add_argument("--device", type=device_arg, help="bind this worker to one device, e.g. cuda:1 (sets "
                        "STYLEDROP_DEVICE for this process)")
    worker.add_argument("--loglevel", default="INFO")
    worker.set_defaults(func=cmd_worker)

    sub.add_parser("migrate", help="upgrade the database schema to the newest version").set_defaults(func=cmd_migrate)

    rec = sub.add_parser("reconcile", help="re-send lost task messages and requeue jobs of dead workers")
    rec.add_argument("--once", action="store_true", help="one pass, then exit")
    rec.set_defaults(func=cmd_reconcile)

    sub.add_parser("webhooks", help="deliver due webhook events (each attempt bounded in time and size)"
                   ).set_defaults(func=cmd_webhooks)

    add_users_commands(sub)

    add_engine_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in ENGINE_COMMANDS:  # the engine's progress lines and its user-facing errors (trainer/cli.py)
        _setup_logging(sys.stderr)
        return run(args, parser)
    if args.command in {"up", "worker", "reconcile", "webhooks"}:
        _setup_logging(sys.stdout)
    else:
        _setup_logging(sys.stderr, logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        sys.stderr.write(f"styledrop {args.command}: interrupted\n")
        return 130
    except Exception as exc:
        message = expected_failure(exc, _database_url())
        if message is None:
            raise
        sub = getattr(args, "users_command", None)
        sys.stderr.write(f"styledrop {args.command}{' ' + sub if sub else ''}: error: {message}\n")
        return 1


def _database_url() -> str | None:
    """The database the settings name, for an error message (None when the settings themselves are bad)."""
    try:
        return _settings().resolved_database_url
    except Exception:  # the settings' own error is the one reported
        return None


if __name__ == "__main__":
    sys.exit(main())
