"""One webhook attempt whose cost no receiver controls: a wall-clock deadline over connect, send and read, and at
most `MAX_RESPONSE_BYTES` of the answer's body read (the rest is dropped with the connection).

httpx's timeouts are per operation (a receiver that trickles one byte every few seconds never trips a read
timeout) and its `response.content` reads the whole body into memory, so the attempt uses the standard library's
`http.client` on a socket whose every read and write is given only the time left before the deadline. The status
line and headers are bounded by `http.client` itself (65,536 bytes a line, 100 headers).
"""

from __future__ import annotations

import http.client
import io
import socket
import ssl
import time
from dataclasses import dataclass

MAX_RESPONSE_BYTES = 64 * 1024


class DeadlineExceeded(TimeoutError):
    """The attempt's wall-clock deadline passed before the receiver answered."""


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise DeadlineExceeded("the receiver did not answer within the attempt's deadline")
    return left


class _DeadlineReader(io.RawIOBase):
    """The socket's read side, each `recv` limited to the time left before the deadline."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._sock, self._deadline = sock, deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        self._sock.settimeout(_remaining(self._deadline))
        try:
            return self._sock.recv_into(buffer)
        except TimeoutError as exc:
            raise DeadlineExceeded("the receiver did not answer within the attempt's deadline") from exc


class _DeadlineSocket:
    """What `http.client` needs of a socket (`sendall`, `makefile`, `close`), with the deadline on every call."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._sock, self._deadline = sock, deadline

    def sendall(self, data: bytes) -> None:
        self._sock.settimeout(_remaining(self._deadline))  # a timeout bounds the whole sendall (Python ≥ 3.5)
        try:
            self._sock.sendall(data)
        except TimeoutError as exc:
            raise DeadlineExceeded("the receiver did not take the request within the attempt's deadline") from exc

    def makefile(self, mode: str = "rb", *_args: object, **_kwargs: object) -> io.BufferedReader:
        return io.BufferedReader(_DeadlineReader(self._sock, self._deadline))

    def settimeout(self, _value: float | None) -> None:
        pass  # the deadline decides

    def close(self) -> None:
        self._sock.close()


class _PinnedConnection(http.client.HTTPConnection):
    """A connection to an address that was already checked, with TLS verified against the URL's host name."""

    def __init__(self, address: str, port: int, *, tls_host: str | None, deadline: float) -> None:
        super().__init__(address, port)
        self._tls_host, self._deadline = tls_host, deadline

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), timeout=_remaining(self._deadline))
        if self._tls_host is not None:
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=self._tls_host)
        self.sock = _DeadlineSocket(sock, self._deadline)  # type: ignore[assignment]


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes  # at most MAX_RESPONSE_BYTES


def post(address: str, port: int, path: str, body: bytes, headers: dict[str, str], *, tls_host: str | None,
         deadline_seconds: float) -> Answer:
    """POST `body` to `address:port` (TLS to `tls_host` when given) and read the status and at most
    MAX_RESPONSE_BYTES of the body, all within `deadline_seconds`. Raises OSError (DeadlineExceeded included),
    ssl.SSLError or http.client.HTTPException."""
    conn = _PinnedConnection(address, port, tls_host=tls_host, deadline=time.monotonic() + deadline_seconds)
    try:
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        return Answer(response.status, response.read(MAX_RESPONSE_BYTES))
    finally:
        conn.close()  # whatever the receiver still sends is dropped with the connection
