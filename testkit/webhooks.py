"""A webhook receiver on 127.0.0.1 and an independent Standard Webhooks signature check."""

from __future__ import annotations

import base64
import hashlib
import hmac
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Receiver:
    """A threaded HTTP server on 127.0.0.1 that records every POST and answers from `plan` (then 200)."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.plan: list[tuple[int, float]] = []  # (status, seconds to stall before answering)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                status, stall = receiver.plan.pop(0) if receiver.plan else (200, 0.0)
                time.sleep(stall)
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:  # the sender timed out and went away
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks?src=styledrop"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """Standard Webhooks verification, written from the spec independently of storage.webhooks.sign."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(hmac.compare_digest(sig, expected) for sig in headers["webhook-signature"].split())


class HostileReceiver:
    """A raw TCP receiver on 127.0.0.1 that reads the request and then answers in a way that costs its sender:
    `huge` (200 with a `body_bytes` body, sent as fast as the sender takes it) or `trickle` (a status line, then one
    header byte every `interval` seconds, `trickle_bytes` of them, then a complete 200). It records how each answer
    ended: `completed` (the whole answer was taken) or `cut` (the sender closed the connection first)."""

    def __init__(self, mode: str, *, body_bytes: int = 0, interval: float = 0.3, trickle_bytes: int = 40) -> None:
        import socket

        self.mode, self.body_bytes, self.interval, self.trickle_bytes = mode, body_bytes, interval, trickle_bytes
        self.outcomes: list[str] = []
        self.sent: list[int] = []
        self.open = 0
        self.lock = threading.Lock()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"
        self.closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _answer(self, conn: Any) -> int:
        sent = 0
        if self.mode == "huge":
            conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {self.body_bytes}\r\n\r\n".encode())
            chunk = b"x" * (1 << 20)
            while sent < self.body_bytes:
                sent += conn.send(chunk[: self.body_bytes - sent])
            return sent
        conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
        for _ in range(self.trickle_bytes):
            if self.closed.wait(self.interval):
                raise OSError("receiver closed")
            sent += conn.send(b"a")
        conn.sendall(b"\r\nContent-Length: 0\r\n\r\n")
        return sent

    def _serve(self, conn: Any) -> None:
        with self.lock:
            self.open += 1
        outcome, sent = "cut", 0
        try:
            with conn:
                conn.settimeout(30)
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head, _, body = data.partition(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                while len(body) < length:
                    body += conn.recv(65536)
                sent = self._answer(conn)
                # the answer was written; it was taken whole when the sender reads to the end and closes
                conn.shutdown(1)
                outcome = "completed" if conn.recv(1) == b"" else "cut"
        except OSError:
            outcome = "cut"
        with self.lock:
            self.open -= 1
            self.outcomes.append(outcome)
            self.sent.append(sent)

    def close(self) -> None:
        self.closed.set()
        self.sock.close()
