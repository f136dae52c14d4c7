"""Uploads are bounded before they are read: the caller, the job cap and the storage cap (from `Content-Length`)
are checked before one byte of a style upload's body is pulled, and only `max_concurrent_uploads_per_user` of one
user's (and `max_concurrent_uploads_total` of all) are read at once. Driven through raw ASGI so the test counts
the body chunks the app pulls; SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from testkit.images import png_bytes

BOUNDARY = "b0undary"


def _body() -> bytes:
    return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"descriptor\"\r\n\r\nink\r\n"
            f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"s.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode() + png_bytes() + f"\r\n--{BOUNDARY}--\r\n".encode()


class Upload:
    """One `POST /v1/styles` through the app's ASGI interface; `pulled` counts the body chunks the app read.
    With `hold`, the body's last chunk is sent only once `hold` is set."""

    def __init__(self, app: Any, headers: dict[str, str], *, length: int | None = None,
                 hold: asyncio.Event | None = None) -> None:
        self.app, self.hold, self.pulled, self.sent = app, hold, 0, []  # type: ignore[var-annotated]
        body = _body()
        self.chunks = [body[: len(body) // 2], body[len(body) // 2:]]
        declared = {"content-length": str(length if length is not None else len(body))}
        self.scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
            "path": "/v1/styles", "raw_path": b"/v1/styles", "query_string": b"", "root_path": "",
            "headers": [(k.encode(), v.encode()) for k, v in {
                "host": "testserver", "content-type": f"multipart/form-data; boundary={BOUNDARY}",
                **declared, **headers}.items()],
            "client": ("127.0.0.1", 1234), "server": ("testserver", 80), "state": {},
        }

    async def receive(self) -> dict[str, Any]:
        if self.pulled < len(self.chunks):
            self.pulled += 1
            if self.pulled == len(self.chunks) and self.hold is not None:
                await self.hold.wait()
            return {"type": "http.request", "body": self.chunks[self.pulled - 1],
                    "more_body": self.pulled < len(self.chunks)}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    async def run(self) -> Upload:
        await self.app(self.scope, self.receive, self.send)
        return self

    @property
    def status(self) -> int:
        return int(next(m for m in self.sent if m["type"] == "http.response.start")["status"])

    @property
    def code(self) -> str | None:
        body = b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")
        return json.loads(body).get("code") if self.status >= 400 else None


def _one(app: Any, headers: dict[str, str], **kw: Any) -> Upload:
    return asyncio.run(asyncio.wait_for(Upload(app, headers, **kw).run(), timeout=60))


def _key(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def test_caller_job_cap_and_storage_cap_are_checked_before_the_body(api_client: Any, api_keys: dict[str, str]) -> None:
    app, alice = api_client.app, api_keys["alice"]
    for headers, code in (({}, "unauthorized"), (_key("sd_" + "x" * 40), "unauthorized"),
                          ({"authorization": alice}, "bad_authorization_scheme")):
        refused = _one(app, headers)
        assert (refused.status, refused.code, refused.pulled) == (401, code, 0)
    app.state.settings = app.state.settings.model_copy(update={"max_storage_bytes_per_user": 1_000_000})
    big = _one(app, _key(alice), length=900_000)  # the body as declared, plus the adapter its job will write
    assert (big.status, big.code, big.pulled) == (413, "storage_quota_exceeded", 0)
    app.state.settings = app.state.settings.model_copy(update={"max_storage_bytes_per_user": 0})
    for _ in range(app.state.settings.max_concurrent_jobs_per_user):
        assert _one(app, _key(alice)).status == 202
    capped = _one(app, _key(alice))
    assert (capped.status, capped.code, capped.pulled) == (429, "too_many_jobs", 0)
    assert _one(app, _key(api_keys["bob"])).status == 202  # another user's upload is read as before


def test_concurrent_uploads_are_capped_per_user_and_in_total(api_client: Any, api_keys: dict[str, str]) -> None:
    app = api_client.app
    app.state.settings = app.state.settings.model_copy(update={
        "max_concurrent_uploads_per_user": 1, "max_concurrent_uploads_total": 2, "max_concurrent_jobs_per_user": 9})
    alice, bob, admin = (_key(api_keys[n]) for n in ("alice", "bob", "admin"))

    async def streaming(headers: dict[str, str], hold: asyncio.Event) -> asyncio.Task[Upload]:
        """An upload that has read its first chunk and waits for `hold` before its last one."""
        up = Upload(app, headers, hold=hold)
        task = asyncio.create_task(up.run())
        while up.pulled < len(up.chunks):
            await asyncio.sleep(0.01)
        return task

    async def scenario() -> list[Upload]:
        hold = asyncio.Event()
        first = await streaming(alice, hold)
        second = await Upload(app, alice).run()  # alice again: her one place is taken
        other = await streaming(bob, hold)  # bob: the second place in all
        third = await Upload(app, admin).run()  # nobody else while two are read
        hold.set()
        done = [await first, second, await other, third]
        return [*done, await Upload(app, alice).run()]  # places given back

    first, second, other, third, after = asyncio.run(asyncio.wait_for(scenario(), timeout=60))
    assert (second.status, second.code, second.pulled) == (429, "too_many_uploads", 0)
    assert (third.status, third.code, third.pulled) == (429, "too_many_uploads", 0)
    assert first.status == other.status == after.status == 202
