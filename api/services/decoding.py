"""A bound on how many uploaded images one API process decodes at once.

Each decode of an image near `max_decode_pixels` costs a few hundred MB for a moment (pixels, RGB conversion,
the clean re-encode); without a bound, N concurrent uploads cost N times that. Requests past the bound wait for a
slot, and after `WAIT_SECONDS` answer 503 with Retry-After instead of piling up.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from api.http.errors import Unavailable
from storage.error_codes import ErrorCode

WAIT_SECONDS = 30.0
_lock = threading.Lock()
_slots: dict[int, threading.BoundedSemaphore] = {}


def _semaphore(size: int) -> threading.BoundedSemaphore:
    with _lock:
        if size not in _slots:
            _slots[size] = threading.BoundedSemaphore(size)
        return _slots[size]


@contextmanager
def decode_slot(max_concurrent: int) -> Iterator[None]:
    """Hold one of `max_concurrent` process-wide decode slots (called from worker threads, never the loop)."""
    slots = _semaphore(max(1, max_concurrent))
    if not slots.acquire(timeout=WAIT_SECONDS):
        raise Unavailable("too many images are being decoded right now; retry shortly", code=ErrorCode.DECODER_BUSY,
                          headers={"Retry-After": "5"})
    try:
        yield
    finally:
        slots.release()
