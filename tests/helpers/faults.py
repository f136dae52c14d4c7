"""Helpers for the end-to-end failure tests (tests/test_e2e_*.py): a private redis-server, the real stack as processes,
and direct reads of the job tables. Not a test module."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import httpx
from sqlalchemy import create_engine, text

from storage.states import JOB_FINAL
from testkit.images import style_png
from testkit.stack import Stack, free_port, service_env, wait_http

FINAL = JOB_FINAL


class RedisServer:
    """Our own throwaway redis-server (never the shared one on 6379): stop and start it at will."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.tmp = tmp
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import redis

        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            cwd=self.tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                redis.Redis(port=self.port, socket_connect_timeout=0.5).ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self, graceful: bool = False) -> None:
        """Kill it (or SIGTERM when `graceful`; with no persistence configured it saves nothing either way)."""
        if self.proc is not None and self.proc.poll() is None:
            if graceful:
                self.proc.terminate()
            else:
                self.proc.kill()
            self.proc.wait()
        self.proc = None


class TcpProxy:
    """127.0.0.1:<free port> -> `target`, forwarded by threads. `cut()` closes the listener and every forwarded
    connection (clients then get "connection refused"); `restore()` listens on the same port again."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    restore = start

    def cut(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            conns, self._conns = self._conns, set()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    stop = cut

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:  # cut meanwhile
                    client.close()
                    upstream.close()
                    return
                self._conns.update((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            with self._lock:
                self._conns.discard(src)
                self._conns.discard(dst)


def fault_env(tmp: Path, db_url: str, broker_url: str, **extra: str) -> dict[str, str]:
    settings = {
        "DATABASE_URL": db_url, "BROKER_URL": broker_url, "STYLEDROP_HEARTBEAT_STALE_SECONDS": "4",
        "STYLEDROP_RECONCILE_EVERY": "1", "STYLEDROP_CHECKPOINT_EVERY": "2", "STYLEDROP_PROGRESS_EVERY": "1",
        "STYLEDROP_MAX_ATTEMPTS": "3", "STYLEDROP_MAX_CONCURRENT_JOBS_PER_USER": "20",
        "STYLEDROP_PREVIEW_PROMPTS": '["a cat"]',
    }
    return service_env(tmp / "data", **{**settings, **extra})


class FaultStack(NamedTuple):
    stack: Stack
    client: httpx.Client
    db: Db
    redis: RedisServer


@contextmanager
def fault_stack(tmp: Path, db_url: str, *, direct_db_url: str | None = None, **extra: str) -> Iterator[FaultStack]:
    """A private redis-server, the API on `fault_env` settings (plus `extra`), and direct reads of the database
    (`direct_db_url` when the service's own URL goes through a proxy); all stopped when the block ends."""
    redis = RedisServer(tmp)
    redis.start()
    db = Db(direct_db_url or db_url)
    try:
        with running_stack(tmp, fault_env(tmp, db_url, redis.url, **extra)) as (stack, client):
            yield FaultStack(stack, client, db, redis)
    finally:
        db.close()
        redis.stop()


@contextmanager
def running_stack(tmp: Path, env: dict[str, str], *, api: bool = True) -> Iterator[tuple[Stack, httpx.Client]]:
    stack = Stack(tmp, env)
    port = free_port()
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    try:
        if api:
            stack.spawn("api", "-m", "uvicorn", "api.main:create_app", "--factory", "--port", str(port))
            wait_http(client, stack)
        yield stack, client
    finally:
        client.close()
        for proc, _ in stack.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def spawn_worker(stack: Stack, queue: str, n: int = 0) -> subprocess.Popen[bytes]:
    return stack.spawn(f"{queue}{n}", "-m", "worker.cli", "worker", "--queue", queue)


def spawn_reconciler(stack: Stack, n: int = 0) -> subprocess.Popen[bytes]:
    return stack.spawn(f"reconcile{n}", "-m", "worker.cli", "reconcile")


def kill(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


class Db:
    def __init__(self, url: str) -> None:
        self.engine = create_engine(url, pool_pre_ping=True)

    def rows(self, sql: str, **params: Any) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(text(sql), params))

    def one(self, sql: str, **params: Any) -> Any:
        (row,) = self.rows(sql, **params)
        return row

    def job(self, job_id: str) -> Any:
        return self.one("SELECT * FROM training_jobs WHERE id = :i", i=job_id)

    def close(self) -> None:
        self.engine.dispose()


def wait_for(what: str, predicate: Callable[[], Any], stack: Stack, timeout: float = 120,
             every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}\n{stack.logs()}")


def post_style(client: httpx.Client, key: str, steps: int, color: tuple[int, int, int] = (200, 40, 40),
               **headers: str) -> httpx.Response:
    return client.post("/v1/styles", headers={"Authorization": f"Bearer {key}", **headers},
                       files={"image": ("s.png", style_png(color), "image/png")},
                       data={"descriptor": "stripes", "steps": str(steps), "seed": "1"})


def make_user(stack: Stack, name: str) -> str:
    return stack.cli("users", "create", name).strip().splitlines()[-1]


def unfinished(db: Db) -> list[tuple]:
    """(table, id, state) of every job and generation not yet in a final state."""
    return db.rows("SELECT 'training_jobs', id, state FROM training_jobs WHERE state NOT IN "
                   "('succeeded','failed','cancelled') UNION ALL "
                   "SELECT 'generations', id, state FROM generations WHERE state NOT IN ('succeeded','failed')")


def assert_all_final_one_adapter_each(db: Db) -> None:
    """Every job and generation is final; every succeeded job has exactly one adapter, the others none."""
    assert unfinished(db) == []
    for job_id, state, n in db.rows(
        "SELECT j.id, j.state, count(a.id) FROM training_jobs j LEFT JOIN adapters a ON a.job_id = j.id "
        "GROUP BY j.id, j.state"
    ):
        assert n == (1 if state == "succeeded" else 0), (job_id, state, n)


def progress_steps(db: Db, job_id: str) -> list[tuple[int, str]]:
    """(event id, 'state:<to>' or 'progress:<step>') for the job, oldest first."""
    import json

    out = []
    for eid, kind, payload in db.rows(
        "SELECT id, kind, payload FROM job_events WHERE job_id = :i ORDER BY id", i=job_id
    ):
        p = payload if isinstance(payload, dict) else json.loads(payload)
        if kind == "state":
            out.append((eid, f"state:{p['to']}"))
        elif kind == "progress":
            out.append((eid, f"progress:{p['step']}"))
    return out


__all__ = ["sys"]
