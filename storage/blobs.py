"""The blob store: style images, adapter files, checkpoints, generated images.

Keys are made by the server (`new_key`, `content_key`), never taken from users, and checked against a strict
pattern anyway. Writes are atomic: a temp file in the target directory, fsync, rename, fsync of the directory;
or one S3 PUT.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast, runtime_checkable

if TYPE_CHECKING:
    from storage.settings import Settings

logger = logging.getLogger(__name__)

KEY_RE = re.compile(r"^[a-z0-9][a-z0-9/_.-]{0,200}$")
_PART_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,40}$")


TEMP_MAX_AGE_SECONDS = 3600.0  # a blob write takes seconds; a temp file this old was abandoned


@dataclass(frozen=True)
class BlobInfo:
    key: str
    size: int
    modified: float  # seconds since the epoch: file mtime, or the S3 object's LastModified


class BlobIntegrityError(Exception):
    """The stored bytes do not hash to the sha256 recorded for them."""


class BlobNotFound(FileNotFoundError):
    pass


def validate_key(key: str) -> str:
    if (
        not isinstance(key, str)
        or not KEY_RE.fullmatch(key)
        or ".." in key
        or "//" in key
        or key.endswith("/")
        or any(part.startswith(".") for part in key.split("/"))
    ):
        raise ValueError(f"invalid blob key {key!r}")
    return key


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def new_key(kind: str, ext: str) -> str:
    """A fresh server-made key, e.g. `styles/3f/3fa9....png`."""
    if not _PART_RE.fullmatch(kind) or not _PART_RE.fullmatch(ext):
        raise ValueError(f"invalid key kind/ext {kind!r}/{ext!r}")
    name = uuid.uuid4().hex
    return validate_key(f"{kind}/{name[:2]}/{name}.{ext}")


def content_key(kind: str, sha256: str, ext: str) -> str:
    """A content-addressed key: the same bytes always land at the same key."""
    if not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise ValueError("sha256 must be 64 lowercase hex digits")
    if not _PART_RE.fullmatch(kind) or not _PART_RE.fullmatch(ext):
        raise ValueError(f"invalid key kind/ext {kind!r}/{ext!r}")
    return validate_key(f"{kind}/{sha256[:2]}/{sha256}.{ext}")


@runtime_checkable
class BlobStore(Protocol):
    def put_bytes(self, key: str, data: bytes) -> None: ...
    def get_bytes(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def delete(self, key: str) -> None: ...
    def sweep_temp_files(self, older_than: float = ...) -> int: ...
    def list_blobs(self) -> Iterator[BlobInfo]: ...
    def modified(self, key: str) -> float | None: ...


def get_verified(store: BlobStore, key: str, expected_sha256: str) -> bytes:
    data = store.get_bytes(key)
    actual = sha256_hex(data)
    if actual != expected_sha256.lower():
        logger.error("blob %s: sha256 %s, expected %s", key, actual, expected_sha256)
        raise BlobIntegrityError(f"blob {key}: sha256 {actual} does not match the recorded {expected_sha256}")
    return data


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(target: Path, write: Any) -> None:
    """Write through `write(fileobj)` into a temp file beside `target`, then rename it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".tmp-", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    _fsync_dir(target.parent)


class LocalBlobStore:
    """Blobs as files under `root`. Safe to share between processes on one host (or one shared volume)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        path = (self.root / validate_key(key)).resolve()
        if not path.is_relative_to(self.root):  # belt and braces; the regex already forbids this
            raise ValueError(f"invalid blob key {key!r}")
        return path

    def put_bytes(self, key: str, data: bytes) -> None:
        _atomic_write(self.path(key), lambda fh: fh.write(data))

    def get_bytes(self, key: str) -> bytes:
        try:
            return self.path(key).read_bytes()
        except FileNotFoundError as exc:
            raise BlobNotFound(key) from exc

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(key).unlink()

    def list_blobs(self) -> Iterator[BlobInfo]:
        """Every stored blob (temp files of writes in progress excluded)."""
        for path in self.root.rglob("*"):
            if path.name.startswith(".tmp-"):
                continue
            with contextlib.suppress(FileNotFoundError):
                st = path.stat()
                if path.is_file():
                    yield BlobInfo(path.relative_to(self.root).as_posix(), st.st_size, st.st_mtime)

    def modified(self, key: str) -> float | None:
        try:
            return self.path(key).stat().st_mtime
        except FileNotFoundError:
            return None

    def sweep_temp_files(self, older_than: float = TEMP_MAX_AGE_SECONDS) -> int:
        """Delete temp files left by a process killed between creating and renaming them; returns the count.

        Only files older than `older_than` seconds go, so writes in progress in other processes are untouched.
        """
        cutoff = time.time() - older_than
        removed = 0
        for tmp in self.root.rglob(".tmp-*"):
            with contextlib.suppress(FileNotFoundError):
                if tmp.is_file() and tmp.stat().st_mtime < cutoff:
                    tmp.unlink()
                    removed += 1
        if removed:
            logger.warning("removed %d abandoned temp file(s) from %s", removed, self.root)
        return removed


class S3BlobStore:
    """Blobs in an S3-compatible bucket (AWS, MinIO, R2, moto). Each write is a single PUT."""

    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        prefix: str = "",
        client: Any = None,
    ) -> None:
        import boto3

        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.client = client or boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
        )

    def _key(self, key: str) -> str:
        return self.prefix + validate_key(key)

    @staticmethod
    def _missing(exc: Exception) -> bool:
        code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
        return code in {"404", "NoSuchKey", "NotFound"}

    def put_bytes(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def _get(self, key: str) -> Any:
        from botocore.exceptions import ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if self._missing(exc):
                raise BlobNotFound(key) from exc
            raise

    def get_bytes(self, key: str) -> bytes:
        body = self._get(key)["Body"]
        try:
            return cast(bytes, body.read())
        finally:
            body.close()

    def _head(self, key: str) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError

        try:
            return cast(dict[str, Any], self.client.head_object(Bucket=self.bucket, Key=self._key(key)))
        except ClientError as exc:
            if self._missing(exc):
                return None
            raise

    def exists(self, key: str) -> bool:
        return self._head(key) is not None

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def list_blobs(self) -> Iterator[BlobInfo]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
            for obj in page.get("Contents", []):
                yield BlobInfo(obj["Key"][len(self.prefix):], int(obj["Size"]), obj["LastModified"].timestamp())

    def modified(self, key: str) -> float | None:
        head = self._head(key)
        return None if head is None else float(head["LastModified"].timestamp())

    def sweep_temp_files(self, older_than: float = TEMP_MAX_AGE_SECONDS) -> int:
        """Nothing to sweep: every S3 write is a single PUT, never a partial object."""
        return 0


def blob_store_from_settings(settings: Settings) -> BlobStore:
    if settings.blob_backend == "s3":
        if not settings.s3_bucket:
            raise ValueError("blob_backend=s3 needs S3_BUCKET")
        return S3BlobStore(
            settings.s3_bucket,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            access_key_id=settings.s3_access_key_id,
            secret_access_key=settings.s3_secret_access_key,
            prefix=settings.s3_prefix,
        )
    return LocalBlobStore(settings.resolved_blob_dir)
