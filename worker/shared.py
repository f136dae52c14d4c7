"""What the training run (`worker.tasks`) and the generation batch (`worker.generation`) both use: the errors
Celery retries, a logger that names the row a line is about, and PNG bytes in and out of the blob store."""

from __future__ import annotations

import io
import logging
from collections.abc import MutableMapping
from typing import Any

from PIL import Image
from sqlalchemy.exc import OperationalError

try:  # redis is installed with celery[redis]; keep the worker importable without it
    from redis.exceptions import ConnectionError as RedisConnectionError

    # Only these are retried by Celery (the database or the broker blinked); every other error ends the row in a
    # final state with a reason.
    TRANSIENT: tuple[type[Exception], ...] = (OperationalError, RedisConnectionError)
except ImportError:  # pragma: no cover
    TRANSIENT = (OperationalError,)


class IdLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Prefixes every message with the job or generation id it is about."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        extra = self.extra or {}
        return f"[{extra.get('kind', 'job')} {extra.get('id')}] {msg}", kwargs


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def open_image(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image
