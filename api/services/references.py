"""A style's reference images as an upload brings them: up to `max_style_images` images, each with an optional
caption, or a subject's 1..N photos with its class word. Checked in full before anything is decoded or stored, so
a bad request leaves no row or blob behind (the decode and the store come after, in `store_references`).

Memory: an upload's files stay where the multipart parser spooled them (a temporary file past 1 MB) and are read
one at a time (`ImageSource`); each is decoded and re-encoded on its own, and its clean PNG waits in an unnamed
temporary file (`SpooledImage`) until every image has passed, then goes to the blob store one at a time. So one
upload holds about one image in memory at once, not all of them twice."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Any, Literal, Protocol

from api.http.errors import Invalid
from api.services import limits
from api.services.text import is_invisible, unsafe_character
from api.services.uploads import normalize_image
from storage.blobs import BlobStore, content_key
from storage.error_codes import ErrorCode
from storage.images import NormalizedImage
from storage.settings import Settings
from trainer.contracts.limits import MAX_CAPTION, MAX_CLASS_WORD

StyleKind = Literal["style", "subject"]


class ImageSource(Protocol):
    """One uploaded file, read only when needed (and again when needed twice)."""

    def read(self) -> bytes: ...


@dataclass(frozen=True)
class SpooledImage:
    """A decoded, re-encoded reference image waiting in an unnamed temporary file to be stored."""

    file: IO[bytes]
    size: int
    width: int
    height: int
    sha256: str

    def png_bytes(self) -> bytes:
        self.file.seek(0)
        return self.file.read()


@dataclass(frozen=True)
class ReferenceInput:
    kind: StyleKind
    images: list[ImageSource]
    captions: list[str | None]  # one per image; None = the StyleDrop prompt from the descriptor
    class_word: str | None


def check_references(*, settings: Settings, kind: str, images: Sequence[ImageSource], captions: Sequence[str] | None,
                     class_word: str | None) -> ReferenceInput:
    if kind not in ("style", "subject"):
        raise Invalid("kind must be 'style' or 'subject'", code=ErrorCode.BAD_KIND, field="body.kind")
    if not images:
        raise Invalid("at least one image is needed", code=ErrorCode.NO_IMAGE, field="body.image")
    if len(images) > settings.max_style_images:
        raise Invalid(f"{len(images)} images sent; a {kind} takes at most {limits.limit(settings, 'max_style_images')}",
                      code=ErrorCode.TOO_MANY_IMAGES, field="body.image")
    given = list(captions or [])
    if len(given) > len(images):
        raise Invalid(f"{len(given)} captions for {len(images)} images: send at most one caption per image, in "
                      "the images' order", code=ErrorCode.BAD_CAPTION, field="body.caption")
    cleaned: list[str | None] = []
    for n, caption in enumerate(given):
        text = caption.strip()
        if text and (len(text) > MAX_CAPTION or is_invisible(text)):
            raise Invalid(f"caption {n + 1} must be 1..{MAX_CAPTION} visible characters (empty = the StyleDrop "
                          "prompt)", code=ErrorCode.BAD_CAPTION, field="body.caption")
        if bad := unsafe_character(text):
            raise Invalid(f"caption {n + 1} contains {bad}", code=ErrorCode.BAD_CAPTION, field="body.caption")
        cleaned.append(text or None)
    cleaned += [None] * (len(images) - len(cleaned))
    word = (class_word or "").strip() or None
    if word is not None and (bad := unsafe_character(word)):
        raise Invalid(f"class_word contains {bad}", code=ErrorCode.BAD_CLASS_WORD, field="body.class_word")
    if kind == "subject":
        if word is None or len(word) > MAX_CLASS_WORD or is_invisible(word):
            raise Invalid(f"a subject needs a class word of 1..{MAX_CLASS_WORD} visible characters (what the "
                          "subject is, e.g. 'dog')", code=ErrorCode.BAD_CLASS_WORD, field="body.class_word")
        if any(c is not None for c in cleaned):
            raise Invalid("subject photos take no captions: each trains on 'a photo of [V] <class_word>'",
                          code=ErrorCode.BAD_CAPTION, field="body.caption")
    elif word is not None:
        raise Invalid("class_word applies to kind 'subject' only", code=ErrorCode.BAD_CLASS_WORD,
                      field="body.class_word")
    return ReferenceInput(kind, list(images), cleaned, word)  # type: ignore[arg-type]


def _spool(image: NormalizedImage) -> SpooledImage:
    file = tempfile.TemporaryFile()  # noqa: SIM115 - outlives this call; close_all closes it. Unnamed: never listed
    file.write(image.png_bytes)
    return SpooledImage(file, len(image.png_bytes), image.width, image.height, image.sha256)


def decode_references(settings: Settings, refs: ReferenceInput) -> list[SpooledImage]:
    """Every image decoded with the upload checks and re-encoded, one at a time (4xx naming the image on a bad
    one); the caller closes them (`close_all`)."""
    out: list[SpooledImage] = []
    try:
        for n, source in enumerate(refs.images):
            what = f"image {n + 1}" if len(refs.images) > 1 else "image"
            out.append(_spool(normalize_image(source.read(), settings=settings, what=what)))
    except BaseException:
        close_all(out)
        raise
    return out


def close_all(images: Sequence[SpooledImage]) -> None:
    for image in images:
        image.file.close()


def store_references(blobs: BlobStore, normalized: Sequence[SpooledImage],
                     refs: ReferenceInput) -> list[dict[str, Any]]:
    """Store every image under its content hash, one at a time; returns the style row's `references`."""
    out: list[dict[str, Any]] = []
    for image, caption in zip(normalized, refs.captions, strict=True):
        key = content_key("styles", image.sha256, "png")
        blobs.put_bytes(key, image.png_bytes())  # rewritten even when present: a fresh blob is safe from the reclaimer
        out.append({"key": key, "sha256": image.sha256, "bytes": image.size, "width": image.width,
                    "height": image.height, "caption": caption})
    return out
