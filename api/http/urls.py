"""The base URL of each answer (storage/urls.py): `STYLEDROP_PUBLIC_URL` when set, else the address the request came
to (scheme, host and root path; behind a proxy, uvicorn's `--proxy-headers` makes that the public one). Pure ASGI,
so the base also holds while a streamed answer (an event stream) is written."""

from __future__ import annotations

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from storage import urls
from storage.settings import Settings


class BaseUrlMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        settings: Settings = scope["app"].state.settings
        with urls.base_url(settings.public_url or str(Request(scope).base_url)):
            await self.app(scope, receive, send)
