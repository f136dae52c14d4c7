"""Auth: 401 without a valid key, 403 for non-admins on admin routes, 404 for other users' objects; cookies."""

from __future__ import annotations

import io
from typing import Any

import pytest
from PIL import Image

from api.http.security import SESSION_COOKIE
from storage.models import Adapter, ApiKey, Generation, utcnow
from tests.helpers.app import bearer


def png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (80, 80), (10, 120, 200)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def alice_objects(api_client: Any, api_keys: dict[str, str]) -> dict[str, str]:
    """A style + job (via the API), an adapter and a finished generation with one image, all alice's."""
    resp = api_client.post(
        "/v1/styles", headers=bearer(api_keys["alice"]), data={"descriptor": "Ink & Wash!", "steps": "3"},
        files={"image": ("s.png", png_bytes(), "image/png")},
    )
    assert resp.status_code == 202, resp.text
    style_id, job_id = resp.json()["style"]["id"], resp.json()["job"]["id"]
    blobs = api_client.app.state.blobs
    from storage.blobs import sha256_hex

    blobs.put_bytes("adapters/aa/adapter.safetensors", b"fake-safetensors")
    blobs.put_bytes("generated/aa/img0.png", png_bytes())
    with api_client.app.state.sessionmaker() as session:
        from storage.models import TrainingJob

        job = session.get(TrainingJob, job_id)
        assert job is not None
        adapter = Adapter(
            version=1, owner_id=job.owner_id, style_id=style_id, job_id=job_id,
            blob_key="adapters/aa/adapter.safetensors",
            sha256=sha256_hex(b"fake-safetensors"), bytes=16, base_model="tiny", rank=4, alpha=4.0,
            targets=["to_q"], descriptor="Ink & Wash!", train_prompt="a thing in Ink & Wash! style", steps=3,
            seed=1, engine_version="test",
        )
        session.add(adapter)
        session.flush()
        gen = Generation(
            owner_id=job.owner_id, adapter_id=adapter.id, prompt="a cat", guidance_scale=10.0, steps=12, seed=1,
            num_images=1, state="succeeded", image_keys=["generated/aa/img0.png"], finished_at=utcnow(),
        )
        session.add(gen)
        session.commit()
        return {"style": style_id, "job": job_id, "adapter": adapter.id, "generation": gen.id}


def _object_routes(o: dict[str, str]) -> list[tuple[str, str]]:
    return [
        ("GET", f"/v1/styles/{o['style']}"),
        ("GET", f"/v1/styles/{o['style']}/image"),
        ("GET", f"/v1/styles/{o['style']}/versions"),
        ("DELETE", f"/v1/styles/{o['style']}"),
        ("GET", f"/v1/jobs/{o['job']}"),
        ("GET", f"/v1/jobs/{o['job']}/events"),
        ("POST", f"/v1/jobs/{o['job']}/cancel"),
        ("GET", f"/v1/jobs/{o['job']}/previews/0"),
        ("GET", f"/v1/adapters/{o['adapter']}"),
        ("GET", f"/v1/adapters/{o['adapter']}/file"),
        ("DELETE", f"/v1/adapters/{o['adapter']}"),
        ("GET", f"/v1/generations/{o['generation']}"),
        ("GET", f"/v1/generations/{o['generation']}/images/0"),
    ]


def test_other_users_objects_answer_404(api_client, api_keys, alice_objects) -> None:
    for method, path in _object_routes(alice_objects):
        resp = api_client.request(method, path, headers=bearer(api_keys["bob"]))
        assert resp.status_code == 404, (method, path, resp.status_code)
        assert resp.json()["code"] == "not_found"
    gen = api_client.post("/v1/generations", headers=bearer(api_keys["bob"]),
                          json={"prompt": "x", "adapter_id": alice_objects["adapter"]})
    assert gen.status_code == 404
    for path in ("/v1/styles", "/v1/jobs", "/v1/adapters", "/v1/generations"):
        assert api_client.get(path, headers=bearer(api_keys["bob"])).json() == {"items": [], "next": None}
    # the owner sees all of them
    assert api_client.get(f"/v1/generations/{alice_objects['generation']}/images/0",
                          headers=bearer(api_keys["alice"])).status_code == 200


def test_missing_or_bad_key_is_401(api_client, api_keys, alice_objects) -> None:
    for method, path in [*_object_routes(alice_objects), ("GET", "/v1/admin/overview"), ("POST", "/v1/styles")]:
        assert api_client.request(method, path).status_code == 401, path
        bad = api_client.request(method, path, headers=bearer("sd_" + "0" * 40))
        assert bad.status_code == 401 and bad.json()["code"] == "unauthorized"


def test_admin_routes_need_admin(api_client, api_keys, alice_objects) -> None:
    routes = [
        ("GET", "/v1/admin/jobs"), ("GET", "/v1/admin/overview"), ("GET", "/v1/admin/users"),
        ("POST", f"/v1/admin/jobs/{alice_objects['job']}/cancel"),
        ("POST", f"/v1/admin/jobs/{alice_objects['job']}/retry"),
        ("POST", "/v1/admin/users/x/keys"), ("DELETE", "/v1/admin/keys/x"),
    ]
    for method, path in routes:
        assert api_client.request(method, path).status_code == 401, path
        resp = api_client.request(method, path, headers=bearer(api_keys["alice"]))
        assert resp.status_code == 403, path
    eve = api_client.post("/v1/admin/users", json={"name": "eve"}, headers=bearer(api_keys["alice"]))
    assert eve.status_code == 403
    admin = bearer(api_keys["admin"])
    jobs = api_client.get("/v1/admin/jobs?user=alice&state=queued", headers=admin).json()["items"]
    assert [(j["id"], j["owner_name"]) for j in jobs] == [(alice_objects["job"], "alice")]
    assert api_client.get("/v1/admin/jobs?user=bob", headers=admin).json() == {"items": [], "next": None}
    cancelled = api_client.post(f"/v1/admin/jobs/{alice_objects['job']}/cancel", headers=admin)
    assert cancelled.status_code == 202 and cancelled.json()["state"] == "cancelled"


def test_admin_users_and_keys(api_client, api_keys) -> None:
    admin = bearer(api_keys["admin"])
    created = api_client.post("/v1/admin/users", json={"name": "carol"}, headers=admin)
    assert created.status_code == 201, created.text
    carol_key = created.json()["key"]["key"]
    assert api_client.get("/v1/styles", headers=bearer(carol_key)).status_code == 200
    assert api_client.post("/v1/admin/users", json={"name": "carol"}, headers=admin).status_code == 409
    assert api_client.post("/v1/admin/users", json={"name": ""}, headers=admin).status_code == 422
    second = api_client.post(f"/v1/admin/users/{created.json()['user']['id']}/keys", headers=admin)
    assert second.status_code == 201
    assert api_client.delete(f"/v1/admin/keys/{created.json()['key']['id']}", headers=admin).status_code == 204
    assert api_client.get("/v1/styles", headers=bearer(carol_key)).status_code == 401
    assert api_client.get("/v1/styles", headers=bearer(second.json()["key"])).status_code == 200
    assert api_client.delete("/v1/admin/keys/nope", headers=admin).status_code == 404
    names = {u["name"] for u in api_client.get("/v1/admin/users", headers=admin).json()["items"]}
    assert names == {"admin", "alice", "bob", "carol"}


def test_session_cookie_authenticates(api_client, api_keys) -> None:
    from datetime import timedelta

    from sqlalchemy import select

    from storage.sessions import open_session
    from storage.users import hash_key

    with api_client.app.state.sessionmaker() as session:
        key = session.scalars(select(ApiKey).where(ApiKey.key_hash == hash_key(api_keys["alice"]))).one()
        token = open_session(session, user_id=key.user_id, api_key_id=key.id, max_age=timedelta(hours=1))
        session.commit()
    api_client.cookies.set(SESSION_COOKIE, token)
    assert api_client.get("/v1/styles").status_code == 200
    api_client.cookies.set(SESSION_COOKIE, token[:-1] + ("A" if token[-1] != "A" else "B"))
    assert api_client.get("/v1/styles").status_code == 401
    api_client.cookies.clear()


def test_adapter_download_verified(api_client, api_keys, alice_objects) -> None:
    key = bearer(api_keys["alice"])
    resp = api_client.get(f"/v1/adapters/{alice_objects['adapter']}/file", headers=key)
    assert resp.status_code == 200 and resp.content == b"fake-safetensors"
    expected = f'attachment; filename="ink-wash-{alice_objects["adapter"][:8]}.safetensors"'
    assert resp.headers["content-disposition"] == expected
    assert api_client.get("/v1/jobs/" + alice_objects["job"], headers=key).json()["adapter_id"] == alice_objects[
        "adapter"]
    api_client.app.state.blobs.put_bytes("adapters/aa/adapter.safetensors", b"tampered-bytes!!")
    corrupt = api_client.get(f"/v1/adapters/{alice_objects['adapter']}/file", headers=key)
    assert corrupt.status_code == 409 and corrupt.json()["code"] == "adapter_corrupt"
    assert api_client.delete(f"/v1/adapters/{alice_objects['adapter']}", headers=key).status_code == 204
    assert api_client.get(f"/v1/adapters/{alice_objects['adapter']}", headers=key).status_code == 404
    gen = api_client.post("/v1/generations", headers=key, json={"prompt": "x", "adapter_id": alice_objects["adapter"]})
    assert gen.status_code == 404


def test_api_never_imports_torch_the_engine_or_worker() -> None:
    """The API process loads the engine's torch-free contracts (trainer/contracts/) and nothing else of it."""
    import subprocess
    import sys

    code = (
        "import sys; from api.main import create_app; import api.services.queue, api.http.metrics; "
        "contracts = lambda m: m == 'trainer' or m == 'trainer.contracts' or m.startswith('trainer.contracts.'); "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'trainer', 'worker', 'diffusers') "
        "and not contracts(m)); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
