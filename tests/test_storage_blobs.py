"""Local and S3 blob stores: atomic writes, strict keys, integrity checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from storage.blobs import (
    BlobIntegrityError,
    BlobNotFound,
    BlobStore,
    LocalBlobStore,
    S3BlobStore,
    blob_store_from_settings,
    content_key,
    get_verified,
    new_key,
    sha256_hex,
)
from storage.settings import Settings

BAD_KEYS = [
    "",
    "/etc/passwd",
    "../escape",
    "styles/../../escape",
    "Styles/upper.png",
    "styles/with space.png",
    "styles//double",
    "styles/",
    ".hidden",
    "styles/.tmp-x",
    "a" * 300,
    "styles/ümlaut",
    "styles\\win",
]


def _exercise(store: BlobStore, tmp_path: Path) -> None:
    key = new_key("adapters", "safetensors")
    assert not store.exists(key)
    store.put_bytes(key, b"hello")
    assert store.exists(key) and store.get_bytes(key) == b"hello"
    store.put_bytes(key, b"replaced")
    assert store.get_bytes(key) == b"replaced"
    data = b"x" * 100_000
    key2 = content_key("styles", sha256_hex(data), "png")
    store.put_bytes(key2, data)
    assert get_verified(store, key2, sha256_hex(data)) == data
    store.put_bytes(key2, b"tampered")
    with pytest.raises(BlobIntegrityError):
        get_verified(store, key2, sha256_hex(data))
    store.delete(key)
    store.delete(key)  # deleting a missing key is fine
    assert not store.exists(key)
    with pytest.raises(BlobNotFound):
        store.get_bytes(key)
    for bad in BAD_KEYS:
        with pytest.raises(ValueError):
            store.put_bytes(bad, b"x")
        with pytest.raises(ValueError):
            store.get_bytes(bad)


def test_keys() -> None:
    key = new_key("styles", "png")
    name = key.rsplit("/", 1)[1]
    assert key.startswith(f"styles/{name[:2]}/") and key.endswith(".png") and len(name) == 36
    assert new_key("styles", "png") != key
    with pytest.raises(ValueError):
        new_key("../x", "png")
    with pytest.raises(ValueError):
        content_key("styles", "not-a-hash", "png")


def test_local_store(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    assert isinstance(store, BlobStore)
    _exercise(store, tmp_path)
    leftovers = [p for p in (tmp_path / "blobs").rglob("*") if p.name.startswith(".tmp-")]
    assert leftovers == []


def test_local_store_failed_write_leaves_nothing(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    key = new_key("styles", "png")
    store.put_bytes(key, b"original")
    with pytest.raises(TypeError):  # the write fails half-way: nothing replaces the original, no temp file stays
        store.put_bytes(key, None)  # type: ignore[arg-type]
    assert store.get_bytes(key) == b"original"
    assert [p.name for p in store.path(key).parent.iterdir()] == [store.path(key).name]


def test_s3_store(s3_endpoint: str, s3_bucket: str, tmp_path: Path) -> None:
    store = S3BlobStore(
        s3_bucket,
        endpoint_url=s3_endpoint,
        access_key_id="test",
        secret_access_key="test",
        prefix="tenant-a/",
    )
    _exercise(store, tmp_path)
    key = new_key("images", "png")
    store.put_bytes(key, b"p")
    listed = store.client.list_objects_v2(Bucket=s3_bucket)["Contents"]
    assert f"tenant-a/{key}" in {o["Key"] for o in listed}


def test_store_from_settings(tmp_path: Path, s3_endpoint: str, s3_bucket: str) -> None:
    local = blob_store_from_settings(Settings(data_dir=tmp_path))
    assert isinstance(local, LocalBlobStore) and local.root == (tmp_path / "blobs").resolve()
    s3 = blob_store_from_settings(
        Settings(
            blob_backend="s3",
            S3_BUCKET=s3_bucket,
            S3_ENDPOINT_URL=s3_endpoint,
            S3_ACCESS_KEY_ID="test",
            S3_SECRET_ACCESS_KEY="test",
        )
    )
    assert isinstance(s3, S3BlobStore)
    s3.put_bytes("x/y.bin", b"1")
    assert s3.get_bytes("x/y.bin") == b"1"


def test_sweep_removes_only_abandoned_temp_files(tmp_path: Path) -> None:
    import os
    import time

    from storage.blobs import LocalBlobStore

    store = LocalBlobStore(tmp_path / "blobs")
    store.put_bytes("styles/ab/abc.png", b"done")
    folder = tmp_path / "blobs" / "styles" / "ab"
    old, fresh = folder / ".tmp-killed", folder / ".tmp-in-progress"
    old.write_bytes(b"half")
    fresh.write_bytes(b"half")
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    assert store.sweep_temp_files() == 1
    assert not old.exists() and fresh.exists()  # a write still in progress elsewhere is left alone
    assert store.get_bytes("styles/ab/abc.png") == b"done"
