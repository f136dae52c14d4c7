"""Reading and checking what users upload: bounded reads, image normalisation with its errors, request
hashes for idempotency, and the per-owner lock concurrent requests of one user queue on.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from typing import Any, BinaryIO

from sqlalchemy import update
from sqlalchemy.orm import Session

from api.http.errors import Invalid, TooLarge, UnsupportedMedia
from api.services.decoding import decode_slot
from storage.error_codes import ErrorCode
from storage.images import ImageRejected, NormalizedImage, normalize_upload
from storage.models import (
    User,
)
from storage.settings import Settings

logger = logging.getLogger(__name__)


_CHUNK = 64 * 1024


def read_bounded(stream: BinaryIO, *, max_bytes: int, what: str = "upload") -> bytes:
    """Read `stream` in chunks, refusing (413) as soon as it exceeds `max_bytes`."""
    buf = bytearray()
    while chunk := stream.read(_CHUNK):
        buf += chunk
        if len(buf) > max_bytes:
            raise TooLarge(f"the {what} is larger than the limit of {max_bytes} bytes")
    return bytes(buf)


class BytesSource:
    """An upload already in memory, as an `ImageSource`."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self) -> bytes:
        return self.data


class FileSource:
    """An uploaded file where the multipart parser spooled it, read (in chunks, against `max_bytes`) only when
    needed: a 413 from its size alone when it is over the limit."""

    def __init__(self, stream: BinaryIO, *, max_bytes: int, what: str = "image") -> None:
        self.stream, self.max_bytes, self.what = stream, max_bytes, what
        stream.seek(0, 2)
        if stream.tell() > max_bytes:
            raise TooLarge(f"the {what} is larger than the limit of {max_bytes} bytes")

    def read(self) -> bytes:
        self.stream.seek(0)
        return read_bounded(self.stream, max_bytes=self.max_bytes, what=self.what)


def image_error(exc: ImageRejected, what: str) -> Exception:
    message = f"{what}: {exc.reason}"
    if exc.reason.startswith("not a "):
        return UnsupportedMedia(message, code=ErrorCode.UNSUPPORTED_IMAGE)
    return Invalid(message, code=ErrorCode.BAD_IMAGE)


def normalize_image(data: bytes, *, settings: Settings, what: str) -> NormalizedImage:
    try:
        with decode_slot(settings.max_concurrent_decodes):
            return normalize_upload(
                data, max_pixels=settings.max_image_pixels, min_side=settings.min_image_side,
                max_bytes=settings.max_upload_bytes, max_decode_pixels=settings.max_decode_pixels,
            )
    except ImageRejected as exc:
        raise image_error(exc, what) from exc


def hash_request(image: bytes | Iterable[bytes], fields: dict[str, Any], *, sep: bytes = b"") -> str:
    """The request's idempotency hash: its file(s), joined by `sep`, then its fields. Several files are hashed
    one after another (an iterator: one in memory at a time), never joined into one more copy of the upload."""
    parts = [image] if isinstance(image, bytes) else image
    digest = hashlib.sha256()
    for n, part in enumerate(parts):
        digest.update((sep if n else b"") + part)
    digest.update(json.dumps(fields, sort_keys=True).encode())
    return digest.hexdigest()


def lock_owner(session: Session, owner: User) -> None:
    """Write the owner's row (a no-op UPDATE): PostgreSQL then holds that row's lock, SQLite its write lock, until
    the commit, so concurrent requests of one user (cap checks, idempotent retries) run one after another."""
    session.execute(update(User).where(User.id == owner.id).values(name=User.name))
