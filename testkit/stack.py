"""Real service processes for end-to-end, fault and browser tests, and free ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def process_alive(pid: int) -> bool:
    """The process exists and is not a zombie waiting to be reaped."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def port_free(port: int) -> bool:
    """Nothing listens on 127.0.0.1:`port` (a bind succeeds)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def service_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a service process: this checkout on PYTHONPATH, the tiny model on CPU, short intervals,
    no inherited STYLEDROP_* / DATABASE_URL / BROKER_URL; `extra` adds or overrides."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STYLEDROP_") and k not in
           {"DATABASE_URL", "BROKER_URL"}}
    env.update({
        "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
        "STYLEDROP_DATA_DIR": str(data_dir), "STYLEDROP_MODEL": "tiny", "STYLEDROP_DEVICE": "cpu",
        "STYLEDROP_CHECKPOINT_EVERY": "4", "STYLEDROP_PROGRESS_EVERY": "2", "STYLEDROP_RECONCILE_EVERY": "2",
        "STYLEDROP_PREVIEW_STEPS": "2", "STYLEDROP_RATE_LIMIT_PER_MINUTE": "10000",
    })
    env.update(extra)
    return env


class Stack:
    """Service processes started with `python ...` in a temp folder, each logging to `<name>.log` there."""

    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        self.tmp, self.env = tmp, env
        self.procs: list[tuple[subprocess.Popen[bytes], Path]] = []

    def spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = self.tmp / f"{name}.log"
        proc = subprocess.Popen([sys.executable, *args], cwd=self.tmp, env=self.env, stdout=log.open("wb"),
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append((proc, log))
        return proc

    def api(self, name: str) -> httpx.Client:
        """An API process (`uvicorn api.main:create_app`) on a free port; its client once /healthz answers."""
        port = free_port()
        self.spawn(name, "-m", "uvicorn", "api.main:create_app", "--factory", "--port", str(port),
                   "--log-level", "warning")
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
        wait_http(client, self)
        return client

    def cli(self, *args: str) -> str:
        out = subprocess.run([sys.executable, "-m", "worker.cli", *args], cwd=self.tmp, env=self.env,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return out.stdout

    def logs(self) -> str:
        return "\n".join(f"===== {log.name}\n{log.read_text(errors='replace')[-4000:]}" for _, log in self.procs)

    def stop(self) -> None:
        for proc, _ in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT if proc is self.procs[0][0] else signal.SIGTERM)
        for proc, _ in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def wait_http(client: httpx.Client, stack: Stack, timeout: float = 90) -> None:
    """Until `client`'s /healthz answers 200; fails with the logs when a process exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc, _ in stack.procs:
            assert proc.poll() is None, f"a process exited early\n{stack.logs()}"
        try:
            if client.get("/healthz").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    pytest.fail(f"API did not come up\n{stack.logs()}")



BROWSER_CHROMIUM = "/usr/bin/chromium"
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]
BROWSER_ARTIFACTS = REPO / "test-artifacts"


class BrowserStack:
    """`python -m worker.cli up --model tiny` in a temp data dir, with users made by `worker.cli users create`."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.python = sys.executable
        self.log = tmp / "up.log"
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith("STYLEDROP_") and k not in {"DATABASE_URL", "BROKER_URL"}}
        self.env.update({
            "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
            "STYLEDROP_DATA_DIR": str(tmp / "data"), "STYLEDROP_DEVICE": "cpu", "STYLEDROP_PROGRESS_EVERY": "2",
            "STYLEDROP_CHECKPOINT_EVERY": "50", "STYLEDROP_PREVIEW_STEPS": "2", "STYLEDROP_RECONCILE_EVERY": "2",
            "STYLEDROP_RATE_LIMIT_PER_MINUTE": "10000",
        })
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.python, "-m", "worker.cli", "up", "--model", "tiny", "--port", str(self.port)], cwd=self.tmp,
            env=self.env, stdout=self.log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"`worker.cli up` exited early:\n{self.logs()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        pytest.fail(f"the service did not come up:\n{self.logs()}")

    def create_user(self, name: str, *, admin: bool = False) -> str:
        flags = ["--admin"] if admin else []
        out = subprocess.run([self.python, "-m", "worker.cli", "users", "create", name, *flags],
                             cwd=self.tmp, env=self.env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip().splitlines()[-1]

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-6000:] if self.log.exists() else ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
