"""Security headers on every response: `nosniff` everywhere; on HTML pages also a Content-Security-Policy (no
inline script or style: the pages load /static/styledrop.js and .css only), `frame-ancestors 'none'` and a
same-origin Referrer-Policy. The Swagger/ReDoc pages (/docs, /redoc) load their own inline script and CDN assets,
so they get only nosniff."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
    "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_DOC_PATHS = ("/docs", "/redoc")


class SecurityHeadersMiddleware:
    """Pure ASGI (not BaseHTTPMiddleware), so streamed responses (SSE) pass through untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        docs = str(scope.get("path", "")).startswith(_DOC_PATHS)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", [])]
                names = {k.lower() for k, _ in headers}
                add = [(b"x-content-type-options", b"nosniff")]
                content_type = next((v for k, v in headers if k.lower() == b"content-type"), b"")
                if content_type.startswith(b"text/html") and not docs:
                    add += [(b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
                            (b"referrer-policy", b"same-origin"), (b"x-frame-options", b"DENY")]
                headers += [(k, v) for k, v in add if k not in names]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
