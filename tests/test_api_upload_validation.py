"""Hostile input over HTTP (in-process, SQLite and PostgreSQL): every bad upload or field answers a clear 4xx with
its reason and leaves no row, blob or temp file behind; odd-but-valid images are accepted and stored re-encoded.

The image decoder itself is unit-tested in test_storage_images.py; here each case goes through the real routes.
"""

from __future__ import annotations

import asyncio
import io
import json
import struct
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import func, select

from storage.models import Generation, Style, TrainingJob
from tests.helpers.app import app_client, bearer


def encode(im: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def stripes(size: tuple[int, int] = (120, 96)) -> Image.Image:
    im = Image.new("RGB", size, (230, 230, 230))
    for x in range(0, size[0], 16):
        im.paste((20, 60, 200), (x, 0, x + 6, size[1]))
    im.paste((250, 0, 0), (0, 0, 24, 24))  # a red mark in the top-left corner: shows the orientation
    return im


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(side: int) -> bytes:
    """A ~100-byte PNG whose header claims side x side pixels (the IDAT holds almost nothing)."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def exif_rotated_jpeg() -> bytes:
    """Pixels stored sideways (96x120) with EXIF orientation 6 (rotate 90° clockwise to view) + GPS-ish junk."""
    sideways = stripes().transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "SpyCam Inc."  # Make: must not survive
    return encode(sideways, "JPEG", exif=exif.tobytes(), quality=95)


BAD_IMAGES: dict[str, tuple[bytes, int, str]] = {
    # name: (bytes, status, words in the reason)
    "text named .png": (b"hello, I am not an image\n" * 20, 415, "not a PNG"),
    "svg": (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="512" height="512">'
            b'<rect width="512" height="512" fill="red"/><script>alert(1)</script></svg>', 415, "not a PNG"),
    "html": (b"<!doctype html><html><body><img src=x onerror=alert(1)></body></html>", 415, "not a PNG"),
    "truncated png": (encode(stripes((200, 200)), "PNG")[:400], 422, "corrupt"),
    "truncated jpeg": (encode(stripes((200, 200)), "JPEG")[:700], 422, "corrupt"),
    "zero bytes": (b"", 422, "empty"),
    "bomb 20000x20000": (bomb_png(20000), 422, "pixels"),
    "bomb 10000x10000 (Pillow only warns)": (bomb_png(10000), 422, "pixels"),
    "too small to train on": (encode(stripes((40, 300)), "PNG"), 422, "too small"),
    "bmp (not allowed)": (encode(stripes(), "BMP"), 415, "not a PNG"),
}


def good_images() -> dict[str, tuple[bytes, tuple[int, int]]]:
    cmyk = stripes().convert("CMYK")
    gray16 = Image.new("I;16", (100, 90))
    gray16.putdata([(x * 650) % 65536 for x in range(100 * 90)])
    palette = stripes().convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0
    frames = [Image.new("RGB", (80, 70), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return {
        "exif-rotated jpeg": (exif_rotated_jpeg(), (120, 96)),
        "cmyk jpeg": (encode(cmyk, "JPEG"), (120, 96)),
        "16-bit png": (encode(gray16, "PNG"), (100, 90)),
        "palette png with transparency": (encode(palette, "PNG", transparency=0), (120, 96)),
        "grayscale": (encode(stripes().convert("L"), "PNG"), (120, 96)),
        "webp": (encode(stripes(), "WEBP", quality=90), (120, 96)),
        "animated gif": (gif.getvalue(), (80, 70)),
    }


@pytest.fixture
def tmpdir_watch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point Python's temp dir (Starlette spools uploads there) at an empty folder we can inspect."""
    folder = tmp_path / "spool"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


@pytest.fixture
def client(api_settings: Any, tmpdir_watch: Path) -> Iterator[Any]:
    """The app with a roomy per-user job cap (these tests upload many good images as one user)."""
    with app_client(api_settings.model_copy(update={"max_concurrent_jobs_per_user": 100})) as c:
        yield c


@pytest.fixture
def keys(client: Any) -> dict[str, str]:
    from storage.users import create_api_key, create_user

    out: dict[str, str] = {}
    with client.app.state.sessionmaker() as session:
        for name in ("alice", "bob"):
            user = create_user(session, name)
            _, out[name] = create_api_key(session, user.id)
        session.commit()
    return out


def counts(client: Any) -> dict[str, int]:
    with client.app.state.sessionmaker() as session:
        return {m.__name__: int(session.scalar(select(func.count()).select_from(m)) or 0)
                for m in (Style, TrainingJob, Generation)}


def blob_files(client: Any) -> list[Path]:
    root = client.app.state.settings.resolved_blob_dir
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def assert_nothing_left(client: Any, spool: Path) -> None:
    assert counts(client) == {"Style": 0, "TrainingJob": 0, "Generation": 0}
    assert blob_files(client) == []
    assert list(spool.iterdir()) == [], "a spooled upload was left in the temp dir"


def post_style(client: Any, key: str, image: bytes, filename: str = "style.png", **fields: Any) -> Any:
    data = {"descriptor": "watercolor painting", **fields}
    return client.post("/v1/styles", headers=bearer(key), data=data,
                       files={"image": (filename, image, "image/png")})


def test_bad_style_images_are_refused_with_a_reason_and_leave_nothing(client, keys, tmpdir_watch, api_redis) -> None:
    for name, (data, status, reason) in BAD_IMAGES.items():
        resp = post_style(client, keys["alice"], data)
        assert resp.status_code == status, (name, resp.status_code, resp.text)
        problem = resp.json()
        assert reason in problem["detail"] and problem["detail"].startswith("image:"), (name, problem)
        assert problem["code"] in {"unsupported_image", "bad_image"}, (name, problem)
        assert_nothing_left(client, tmpdir_watch)
    assert api_redis.llen("train") == 0


def test_bad_init_images_and_masks_for_generations(client, keys, tmpdir_watch) -> None:
    good = encode(stripes(), "PNG")
    for name, (data, status, reason) in BAD_IMAGES.items():
        if name == "too small to train on":
            continue  # init images follow the same minimum; covered by the style case
        resp = client.post("/v1/generations", headers=bearer(keys["alice"]), data={"prompt": "a cat"},
                           files={"init_image": ("i.png", data, "image/png")})
        assert resp.status_code == status and reason in resp.json()["detail"], (name, resp.text)
        mask = client.post("/v1/generations", headers=bearer(keys["alice"]), data={"prompt": "a cat"},
                           files={"init_image": ("i.png", good, "image/png"), "mask": ("m.png", data, "image/png")})
        assert mask.status_code == status and mask.json()["detail"].startswith("mask:"), (name, mask.text)
        assert_nothing_left(client, tmpdir_watch)
    wrong = encode(Image.new("L", (64, 64), 255), "PNG")
    resp = client.post("/v1/generations", headers=bearer(keys["alice"]), data={"prompt": "a cat"},
                       files={"init_image": ("i.png", good, "image/png"), "mask": ("m.png", wrong, "image/png")})
    assert resp.status_code == 422 and resp.json()["code"] == "mask_size_mismatch"
    assert "64x64" in resp.json()["detail"] and "120x96" in resp.json()["detail"]
    assert_nothing_left(client, tmpdir_watch)


def test_odd_but_valid_images_are_accepted_and_stored_clean(client, keys, tmpdir_watch) -> None:
    for name, (data, (width, height)) in good_images().items():
        resp = post_style(client, keys["alice"], data, filename="whatever.bin")
        assert resp.status_code == 202, (name, resp.text)
        style = resp.json()["style"]
        assert (style["width"], style["height"]) == (width, height), name
        stored = client.get(style["image_url"], headers=bearer(keys["alice"]))
        assert stored.status_code == 200 and stored.headers["content-type"] == "image/png"
        im = Image.open(io.BytesIO(stored.content))
        assert im.format == "PNG" and im.mode == "RGB" and im.size == (width, height), name
        # re-encoded without metadata: no EXIF, ICC profile, text chunks, dpi or transparency
        assert not set(im.info) - {"gamma"}, (name, im.info)
        assert b"eXIf" not in stored.content and b"iCCP" not in stored.content and b"tEXt" not in stored.content
        assert b"SpyCam" not in stored.content
        if name == "exif-rotated jpeg":  # upright: the red mark is back in the top-left corner
            r, g, b = im.getpixel((4, 4))
            assert r > 200 and g < 60 and b < 60, im.getpixel((4, 4))
        if name == "animated gif":  # the first frame only
            assert im.getpixel((40, 35)) == (255, 0, 0)
        if name == "palette png with transparency":  # transparency composited on white, not black
            assert (255, 255, 255) in {c for _, c in im.getcolors(256) or []}
    assert list(tmpdir_watch.iterdir()) == []


def test_descriptor_and_field_bounds(client, keys, tmpdir_watch) -> None:
    image = encode(stripes(), "PNG")
    cases: list[tuple[dict[str, Any], str]] = [
        ({"descriptor": ""}, "descriptor"),
        ({"descriptor": "   \t "}, "descriptor"),
        ({"descriptor": "x" * 201}, "descriptor"),
        ({"content": "y" * 501}, "content"),
        ({"steps": "0"}, "steps"),
        ({"steps": "-3"}, "steps"),
        ({"steps": str(10**9)}, "steps"),
        ({"steps": "1e3"}, "steps"),
        ({"seed": "-1"}, "seed"),
        ({"seed": str(2**64)}, "seed"),
    ]
    for fields, word in cases:
        resp = post_style(client, keys["alice"], image, **fields)
        assert resp.status_code == 422, (fields, resp.text)
        assert word in resp.text, (fields, resp.text)
        assert_nothing_left(client, tmpdir_watch)
    long_key = client.post("/v1/styles", headers={**bearer(keys["alice"]), "Idempotency-Key": "k" * 256},
                           data={"descriptor": "ink"}, files={"image": ("s.png", image, "image/png")})
    assert long_key.status_code == 422 and long_key.json()["code"] == "bad_idempotency_key"
    assert_nothing_left(client, tmpdir_watch)


def test_non_utf8_descriptor_and_prompt(client, keys, tmpdir_watch) -> None:
    image = encode(stripes(), "PNG")
    boundary = "XyZboundary"
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"descriptor\"\r\n\r\n".encode()
        + b"\xff\xfe\xc3\x28 ink"
        + f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"s.png\"\r\n"
          f"Content-Type: image/png\r\n\r\n".encode()
        + image + f"\r\n--{boundary}--\r\n".encode()
    )
    resp = client.post("/v1/styles", headers={**bearer(keys["alice"]),
                                              "Content-Type": f"multipart/form-data; boundary={boundary}"},
                       content=body)
    # Starlette would decode it as Latin-1 and hand the route other text; api/http/forms.py makes that a 400 instead.
    assert resp.status_code == 400, resp.text
    assert "not valid utf-8" in resp.json()["detail"]
    assert counts(client)["Style"] == 0 and counts(client)["TrainingJob"] == 0
    raw = b'{"prompt": "a cat \xff\xfe in the rain"}'
    gen = client.post("/v1/generations", headers={**bearer(keys["alice"]), "Content-Type": "application/json"},
                      content=raw)
    assert gen.status_code == 422 and gen.json()["code"] == "bad_json", gen.text
    assert counts(client)["Generation"] == 0


def test_generation_field_bounds_and_unknown_adapter(client, keys) -> None:
    alice = bearer(keys["alice"])
    cases: list[dict[str, Any]] = [
        {"prompt": ""}, {"prompt": "p" * 501}, {"prompt": "x", "negative_prompt": "n" * 501},
        {"prompt": "x", "steps": 0}, {"prompt": "x", "steps": 101}, {"prompt": "x", "steps": 2.5},
        {"prompt": "x", "style_strength": 11}, {"prompt": "x", "style_strength": -2},
        {"prompt": "x", "guidance_scale": -0.1}, {"prompt": "x", "guidance_scale": 51},
        {"prompt": "x", "guidance_scale": "NaN"}, {"prompt": "x", "seed": -1}, {"prompt": "x", "seed": 2**64},
        {"prompt": "x", "num_images": 0}, {"prompt": "x", "num_images": 5}, {"prompt": "x", "num_images": 10**6},
        {"prompt": "x", "strength": 0.5},  # strength without an init image
        {"prompt": "x", "unexpected": 1}, {"prompt": ["a", "b"]}, {"prompt": None},
    ]
    for body in cases:
        resp = client.post("/v1/generations", headers=alice, json=body)
        assert resp.status_code == 422, (body, resp.status_code, resp.text)
    for raw in (b"[1, 2]", b"not json", b'{"prompt": "x"', b"", b'"x"'):
        resp = client.post("/v1/generations", headers={**alice, "Content-Type": "application/json"}, content=raw)
        assert resp.status_code == 422, (raw, resp.text)
    other = client.post("/v1/generations", headers=alice, content=b"prompt=x",
                        params={}, extensions={})  # no content type at all
    assert other.status_code in (415, 422)
    unknown = client.post("/v1/generations", headers=alice, json={"prompt": "x", "adapter_id": "no-such-adapter"})
    assert unknown.status_code == 404 and unknown.json()["code"] == "not_found"
    # A wait above the maximum is clamped (tests/test_api_generation_status.py); a negative one is refused.
    bad_wait = client.post("/v1/generations?wait=-1", headers=alice, json={"prompt": "x"})
    assert bad_wait.status_code == 422 and "wait" in bad_wait.text
    assert counts(client)["Generation"] == 0


def test_oversized_body_is_refused_while_streaming(client, keys, tmpdir_watch) -> None:
    """A 64 MiB upload is cut off with 413 after about the body limit: the app never pulls the rest."""
    app = client.app
    boundary = "b0undary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"descriptor\"\r\n\r\nink\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"s.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode() + encode(stripes(), "PNG")
    chunk = b"\0" * (64 * 1024)
    total_chunks = 1024  # 64 MiB
    pulled = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        if pulled == 0:
            pulled += 1
            return {"type": "http.request", "body": head, "more_body": True}
        if pulled <= total_chunks:
            pulled += 1
            return {"type": "http.request", "body": chunk, "more_body": pulled <= total_chunks}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/v1/styles", "raw_path": b"/v1/styles", "query_string": b"", "root_path": "",
        "headers": [(b"host", b"testserver"), (b"authorization", f"Bearer {keys['alice']}".encode()),
                    (b"content-type", f"multipart/form-data; boundary={boundary}".encode())],
        "client": ("127.0.0.1", 1234), "server": ("testserver", 80), "state": {},
    }
    asyncio.run(asyncio.wait_for(app(scope, receive, send), timeout=60))
    start = next(m for m in sent if m["type"] == "http.response.start")
    assert start["status"] == 413
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert json.loads(body)["code"] == "body_too_large"  # a problem+json reason
    limit = app.state.settings.max_body_bytes
    assert pulled * len(chunk) < limit + 4 * len(chunk), f"read {pulled} chunks for a {limit}-byte limit"
    assert pulled < total_chunks // 10
    assert_nothing_left(client, tmpdir_watch)


def test_file_over_limit_inside_the_body_limit_is_413(client, keys, tmpdir_watch) -> None:
    limit = client.app.state.settings.max_upload_bytes
    resp = post_style(client, keys["alice"], encode(stripes(), "PNG") + b"\0" * (limit + 1))
    assert resp.status_code == 413 and str(limit) in resp.json()["detail"]
    assert_nothing_left(client, tmpdir_watch)
