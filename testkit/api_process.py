"""One real uvicorn API process on embedded defaults (SQLite, file-system broker) in a temp folder, and what the
hostile-load test and bench/hostile.py measure it with: raw event-stream sockets and the process's memory."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from storage.db import upgrade_to_head
from testkit.stack import Stack, service_env


class ApiProcess:
    def __init__(self, stack: Stack, base: str, db_url: str, port: int) -> None:
        self.stack, self.base, self.db_url, self.port = stack, base, db_url, port

    @property
    def pid(self) -> int:
        return self.stack.procs[0][0].pid

    def users(self, n: int) -> list[str]:
        """`n` new users u0, u1, ...; their API keys."""
        from storage.db import make_engine, make_sessionmaker
        from storage.users import create_api_key, create_user

        engine = make_engine(self.db_url)
        keys = []
        with make_sessionmaker(engine)() as session:
            for i in range(n):
                user = create_user(session, f"u{i}")
                keys.append(create_api_key(session, user.id)[1])
            session.commit()
        engine.dispose()
        return keys


@contextmanager
def start_api(tmp_path: Path, **env: str) -> Iterator[ApiProcess]:
    """The API in `tmp_path` (extra `STYLEDROP_*` settings in `env`), stopped when the block ends."""
    data = tmp_path / "data"
    data.mkdir()
    upgrade_to_head(f"sqlite:///{data / 'styledrop.db'}")  # as `styledrop migrate` does before the API starts
    stack = Stack(tmp_path, service_env(data, **env))
    try:
        probe = stack.api("api")
        probe.close()
        base = str(probe.base_url).rstrip("/")
        yield ApiProcess(stack, base, f"sqlite:///{data / 'styledrop.db'}", probe.base_url.port or 0)
    finally:
        stack.stop()


def open_stream(api: ApiProcess, key: str, job_id: str) -> tuple[socket.socket, int]:
    """A raw socket with an SSE request sent; returns it with the status once the head (and for 200 the first
    event) has arrived."""
    sock = socket.create_connection(("127.0.0.1", api.port), timeout=90)
    sock.sendall((f"GET /v1/jobs/{job_id}/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
                  "Accept: text/event-stream\r\n\r\n").encode())
    buf = b""
    while b"\r\n\r\n" not in buf or (buf.startswith(b"HTTP/1.1 200") and b"retry:" not in buf):
        chunk = sock.recv(4096)
        assert chunk, f"connection closed: {buf!r}"
        buf += chunk
    return sock, int(buf.split(b" ", 2)[1])


def process_memory(pid: int, field: str) -> int:
    """A memory figure of process `pid` in bytes, from /proc/<pid>/status: `VmRSS` (now) or `VmHWM` (peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")
