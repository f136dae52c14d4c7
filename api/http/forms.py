"""Multipart form text is checked as it arrives: every field value, field name and file name must be valid text
in the form's charset (UTF-8 unless the request names another) and hold no NUL character.

Starlette decodes a field that is not valid in its charset as Latin-1 instead, silently turning bad bytes into
other text (a descriptor of b"\\xff" would train on "ÿ"), and nothing after parsing can tell that text from real
Latin-1 letters. So the raw bytes are checked on their way to Starlette's parser: routers that take forms use
`StrictFormRoute`, whose request passes its body stream through `FormTextCheck` (python-multipart's parser over the
same chunks, reading only the plain fields and the part headers). A bad field ends the parse with Starlette's own
`MultiPartException`, which Starlette answers as a 400 with the message, before any route code runs.
"""

from __future__ import annotations

import codecs
from collections.abc import AsyncGenerator, Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.datastructures import Headers
from starlette.formparsers import MultiPartException


class FormTextCheck:
    """Feed it a multipart body chunk by chunk; raises MultiPartException at the first text that is not valid."""

    def __init__(self, boundary: bytes, charset: str) -> None:
        self.charset = charset
        self._decoder: codecs.IncrementalDecoder | None = None  # the plain field being read; None in a file part
        self._header = bytearray()
        self._value = bytearray()
        self._disposition = b""
        self._parser = MultipartParser(boundary, {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda data, start, end: self._header.extend(data[start:end]),
            "on_header_value": lambda data, start, end: self._value.extend(data[start:end]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        })

    @classmethod
    def for_headers(cls, headers: Headers) -> FormTextCheck | None:
        """A check for a multipart request (in the charset Starlette will decode it with), else None."""
        media, params = parse_options_header(headers.get("content-type"))
        if media != b"multipart/form-data" or b"boundary" not in params:
            return None  # not a form, or one Starlette refuses by itself
        try:
            charset = codecs.lookup(params.get(b"charset", b"utf-8").decode("latin-1")).name
        except LookupError:
            charset = "latin-1"  # as Starlette does with a charset it does not know: every byte is a letter
        return cls(params[b"boundary"], charset)

    def write(self, chunk: bytes) -> None:
        self._parser.write(chunk)

    def _text(self, text: str) -> None:
        if "\x00" in text:  # PostgreSQL text cannot hold NUL, and no field of ours needs one
            raise MultiPartException("a form field or file name contains a NUL character")

    def _decode(self, decoder: codecs.IncrementalDecoder, data: bytes, *, final: bool = False) -> None:
        try:
            self._text(decoder.decode(data, final=final))
        except UnicodeDecodeError:
            raise MultiPartException(f"a form field or file name is not valid {self.charset} text") from None

    def _part_begin(self) -> None:
        self._decoder = None
        self._disposition = b""

    def _header_end(self) -> None:
        if bytes(self._header).lower() == b"content-disposition":
            self._disposition = bytes(self._value)
        self._header.clear()
        self._value.clear()

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        for name in (b"name", b"filename"):
            if name in options:
                self._decode(codecs.getincrementaldecoder(self.charset)(), options[name], final=True)
        if b"filename" not in options:  # a plain field: its value is text too
            self._decoder = codecs.getincrementaldecoder(self.charset)()

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._decoder is not None:
            self._decode(self._decoder, data[start:end])

    def _part_end(self) -> None:
        if self._decoder is not None:
            self._decode(self._decoder, b"", final=True)


class StrictFormRequest(Request):
    async def stream(self) -> AsyncGenerator[bytes, None]:
        check = FormTextCheck.for_headers(self.headers)
        async for chunk in super().stream():
            if check is not None and chunk:
                check.write(chunk)
            yield chunk


class StrictFormRoute(APIRoute):
    """A route whose multipart form text is checked (see the module docstring); JSON bodies pass untouched."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            return await handler(StrictFormRequest(request.scope, request.receive))

        return strict
