"""The reclaimer on real blob stores (a local directory, and S3 on moto): unreferenced blobs older than the grace
period are deleted and counted, every referenced blob stays; deleted styles and adapters and finished jobs'
checkpoints lose their files; and through the API, the per-user storage cap answers 413."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from storage import jobs
from storage.blobs import BlobStore, LocalBlobStore, S3BlobStore
from storage.db import make_engine, make_sessionmaker
from storage.models import Adapter, Generation, Style, TrainingJob, utcnow
from storage.quotas import charged_bytes
from storage.reclaim import reclaim, user_storage_bytes
from storage.users import create_user
from testkit.images import style_png

HOUR = 3600.0


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    if request.param == "local":
        return LocalBlobStore(tmp_path / "blobs")
    import boto3

    endpoint = request.getfixturevalue("s3_endpoint")
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test",
                          aws_secret_access_key="test")
    return S3BlobStore(request.getfixturevalue("s3_bucket"), client=client, prefix="sd")


@pytest.fixture
def db(sqlite_url: str) -> sessionmaker[Session]:
    return make_sessionmaker(make_engine(sqlite_url))


def _put(store: BlobStore, key: str, n: int) -> str:
    store.put_bytes(key, os.urandom(n))
    return key


def test_reclaim_deletes_only_unreferenced_blobs_past_the_grace_period(
    store: BlobStore, db: sessionmaker[Session]
) -> None:
    live_img = _put(store, "styles/aa/live.png", 1000)
    gone_img = _put(store, "styles/bb/deleted.png", 2000)
    busy_img = _put(store, "styles/cc/busy.png", 50)  # deleted style, but its job still runs
    adapter_live = _put(store, "adapters/aa/live.safetensors", 300)
    adapter_gone = _put(store, "adapters/bb/gone.safetensors", 4000)
    adapter_waited = _put(store, "adapters/cc/waited.safetensors", 70)  # deleted, but a generation waits on it
    ckpt_running = _put(store, "checkpoints/aa/run.safetensors", 500)
    ckpt_cancelled = _put(store, "checkpoints/bb/cancelled.safetensors", 6000)
    ckpt_failed = _put(store, "checkpoints/cc/failed.safetensors", 7000)
    gen_img, init_img, mask = (_put(store, f"{k}/aa/g.png", 10) for k in ("images", "inits", "masks"))
    preview = _put(store, "previews/aa/p.png", 20)
    pick = _put(store, "picks/aa/k.png", 30)  # an automatic round's kept image, listed on its job
    orphan = _put(store, "styles/dd/refused-upload.png", 8000)
    with db() as s:
        user = create_user(s, "alice")

        def style(key: str, deleted: bool = False) -> Style:
            row = Style(owner_id=user.id, image_key=key, image_sha256="0" * 64, image_bytes=10, width=64, height=64,
                        descriptor="d", deleted_at=utcnow() if deleted else None)
            s.add(row)
            s.flush()
            return row

        def job(st: Style, state: str, ckpt: str | None) -> TrainingJob:
            row = TrainingJob(style_id=st.id, owner_id=user.id, total_steps=10, state=state, checkpoint_key=ckpt)
            s.add(row)
            s.flush()
            return row

        live, deleted, busy = style(live_img), style(gone_img, True), style(busy_img, True)
        style(live_img, True)  # a deleted style sharing the live one's (content-addressed) image
        ok = job(live, "succeeded", None)
        job(busy, "running", ckpt_running)
        cancelled, failed = job(deleted, "cancelled", ckpt_cancelled), job(live, "failed", ckpt_failed)
        for version, (key, when) in enumerate(((adapter_live, None), (adapter_gone, utcnow()),
                                               (adapter_waited, utcnow())), 1):
            s.add(Adapter(version=version, owner_id=user.id, style_id=live.id,
                          job_id=job(live, "succeeded", None).id, blob_key=key,
                          sha256="0" * 64, bytes=100, base_model="tiny", rank=4, alpha=4.0, targets=[],
                          descriptor="d", train_prompt="p", steps=1, seed=0, engine_version="1", deleted_at=when))
        s.flush()
        waited = s.scalar(select(Adapter.id).where(Adapter.blob_key == adapter_waited))
        s.add(Generation(owner_id=user.id, adapter_id=waited, prompt="p", guidance_scale=1.0, steps=1, seed=0))
        s.add(Generation(owner_id=user.id, prompt="p", guidance_scale=1.0, steps=1, seed=0, state="succeeded",
                         image_keys=[gen_img], init_image_key=init_img, mask_key=mask))
        jobs.add_event(s, ok.id, "preview", {"image_key": preview, "prompt": "p"})
        ok.picks = [{"prompt": "p", "candidate": 0, "text_score": 0.1, "style_score": 0.2, "score": 0.15,
                     "image_key": pick}]
        s.commit()
        cancelled_id, failed_id = cancelled.id, failed.id

    everything = {b.key: b.size for b in store.list_blobs()}
    # within the grace period nothing goes, referenced or not
    assert reclaim(db, store, grace_seconds=HOUR).deleted == 0
    assert {b.key for b in store.list_blobs()} == set(everything)

    report = reclaim(db, store, grace_seconds=HOUR, now=time.time() + 2 * HOUR)
    garbage = {gone_img, adapter_gone, ckpt_cancelled, ckpt_failed, orphan}
    assert {b.key for b in store.list_blobs()} == set(everything) - garbage
    assert report.deleted == len(garbage) and report.bytes == sum(everything[k] for k in garbage) == 27000
    with db() as s:
        assert s.get(TrainingJob, cancelled_id).checkpoint_key is None  # type: ignore[union-attr]
        assert s.get(TrainingJob, failed_id).checkpoint_key is None  # type: ignore[union-attr]
    assert reclaim(db, store, grace_seconds=HOUR, now=time.time() + 2 * HOUR).deleted == 0


def test_a_blob_rewritten_by_an_upload_is_not_reclaimed(tmp_path: Path, db: sessionmaker[Session]) -> None:
    """An orphan adopted by a new upload (same content, same key) is rewritten, so it is fresh again."""
    store = LocalBlobStore(tmp_path / "blobs")
    key = _put(store, "styles/aa/same.png", 100)
    old = time.time() - 2 * HOUR
    os.utime(store.path(key), (old, old))
    store.put_bytes(key, b"x" * 100)  # what create_style does for content it already has
    assert reclaim(db, store, grace_seconds=HOUR).deleted == 0 and store.exists(key)
    os.utime(store.path(key), (old, old))
    assert reclaim(db, store, grace_seconds=HOUR).deleted == 1 and not store.exists(key)


def test_delete_style_frees_its_file_and_the_storage_cap_is_413(api_client, api_keys) -> None:  # type: ignore[no-untyped-def]
    settings = api_client.app.state.settings
    auth = {"Authorization": f"Bearer {api_keys['alice']}"}

    def upload(color: tuple[int, int, int]):  # type: ignore[no-untyped-def]
        return api_client.post("/v1/styles", headers=auth, data={"descriptor": "stripes", "steps": "5"},
                               files={"image": ("s.png", style_png(color, size=128), "image/png")})

    first = upload((200, 40, 40))
    assert first.status_code == 202, first.text
    store = LocalBlobStore(settings.resolved_blob_dir)
    maker = api_client.app.state.sessionmaker
    with maker() as s:
        style = s.get(Style, first.json()["style"]["id"])
        key, used = style.image_key, user_storage_bytes(s, style.owner_id)
        charged = charged_bytes(s, settings, style.owner_id)  # the image, and the adapter its job will write
    assert used == style.image_bytes > 0 and charged == used + settings.adapter_charge_bytes
    settings.max_storage_bytes_per_user = charged + 2048  # room for a multipart envelope, nothing more
    refused = upload((10, 200, 10))
    assert refused.status_code == 413 and refused.json()["code"] == "storage_quota_exceeded", refused.text
    assert "limit" in refused.json()["detail"]
    assert api_client.delete(f"/v1/styles/{first.json()['style']['id']}", headers=auth).status_code == 204
    assert upload((10, 200, 10)).status_code == 202  # the deleted style no longer counts

    before = {b.key for b in store.list_blobs()}
    report = reclaim(maker, store, grace_seconds=HOUR, now=time.time() + 2 * HOUR)
    assert key in before and not store.exists(key) and report.bytes > 0
    assert {b.key for b in store.list_blobs()} == before - {key}  # the second style's image stays
