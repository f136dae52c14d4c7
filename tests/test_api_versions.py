"""A style's adapter versions: listed with their scores, the newest is the default until the user picks one, and
a generation may name a style (its default) or a style + version instead of an adapter id."""

from __future__ import annotations

from typing import Any

from storage.models import Generation
from testkit.images import png_bytes
from tests.helpers.app import bearer
from tests.helpers.versions import style_with_versions


def test_versions_default_and_generations_naming_a_version(api_client: Any, api_keys: dict[str, str]) -> None:
    alice = bearer(api_keys["alice"])
    style_id, (v1, v2) = style_with_versions(api_client, api_keys["alice"], 2)
    listed = api_client.get(f"/v1/styles/{style_id}/versions", headers=alice).json()["items"]
    assert [(v["version"], v["id"], v["is_default"]) for v in listed] == [(1, v1, False), (2, v2, True)]
    assert listed[0]["text_score"] == 0.1 and listed[0]["style_score"] is None and listed[1]["style_score"] == 0.5
    assert api_client.get(f"/v1/styles/{style_id}", headers=alice).json()["default_version"] == 2

    def generate(**names: Any) -> Any:
        return api_client.post("/v1/generations", headers=alice, json={"prompt": "a cat", **names})

    assert generate(style_id=style_id).json()["adapter_id"] == v2  # newest, nothing chosen yet
    resp = api_client.patch(f"/v1/styles/{style_id}", headers=alice, json={"default_version": 1})
    assert resp.status_code == 200 and resp.json()["default_version"] == 1
    assert [v["is_default"] for v in api_client.get(f"/v1/styles/{style_id}/versions", headers=alice).json()["items"]] \
        == [True, False]
    assert generate(style_id=style_id).json()["adapter_id"] == v1
    assert generate(style_id=style_id, version=2).json()["adapter_id"] == v2
    assert generate(adapter_id=v2).json()["adapter_id"] == v2  # by id, as before

    # The chosen default deleted: the newest live version takes over.
    assert api_client.delete(f"/v1/adapters/{v1}", headers=alice).status_code == 204
    assert generate(style_id=style_id).json()["adapter_id"] == v2


def test_bad_version_requests_are_4xx_and_create_nothing(api_client: Any, api_keys: dict[str, str]) -> None:
    alice, bob = bearer(api_keys["alice"]), bearer(api_keys["bob"])
    style_id, (v1,) = style_with_versions(api_client, api_keys["alice"], 1)
    cases = [
        (alice, {"style_id": style_id, "version": 7}, 404, "version_not_found"),
        (bob, {"style_id": style_id}, 404, "not_found"),
        (alice, {"style_id": style_id, "adapter_id": v1}, 422, "adapter_and_style"),
        (alice, {"version": 1}, 422, "version_without_style"),
    ]
    for who, names, status, code in cases:
        resp = api_client.post("/v1/generations", headers=who, json={"prompt": "a cat", **names})
        assert (resp.status_code, resp.json()["code"]) == (status, code), (names, resp.text)
    fresh = api_client.post("/v1/styles", headers=alice, data={"descriptor": "new"},
                            files={"image": ("s.png", png_bytes(), "image/png")}).json()["style"]["id"]
    resp = api_client.post("/v1/generations", headers=alice, json={"prompt": "a cat", "style_id": fresh})
    assert (resp.status_code, resp.json()["code"]) == (422, "style_not_trained")
    for who, body, status in ((alice, {"default_version": 9}, 404), (bob, {"default_version": 1}, 404),
                              (alice, {"default_version": 0}, 422), (alice, {"default_adapter": v1}, 422)):
        assert api_client.patch(f"/v1/styles/{style_id}", headers=who, json=body).status_code == status, body
    with api_client.app.state.sessionmaker() as s:
        assert s.query(Generation).count() == 0
    assert api_client.get(f"/v1/styles/{fresh}", headers=alice).json()["default_version"] is None
