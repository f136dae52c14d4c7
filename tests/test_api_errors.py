"""One error shape: every 4xx/5xx of the JSON API is an RFC 9457 problem (`application/problem+json`) with a stable
`code`, the request path as `instance`, `errors` naming each refused field, and `Retry-After` where a retry makes
sense; OpenAPI documents it on every operation; the README's example is what the API answers; the HTML pages keep
their own error pages."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from storage.settings import Settings
from testkit.images import png_bytes
from tests.helpers.app import add_users, app_client, bearer
from tests.helpers.db import API_REDIS_URL

README = Path(__file__).resolve().parent.parent / "README.md"
PROBLEM_KEYS = {"type", "title", "status", "detail", "code", "instance"}


def settings_for(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data", "database_url": f"sqlite:///{tmp_path / 'errors.db'}",
        "broker_url": API_REDIS_URL, "secret_key": "errors", "max_upload_bytes": 256 * 1024,
        "rate_limit_per_minute": 1000, **overrides}
    return Settings(**values)


@pytest.fixture
def client(tmp_path: Path, api_redis: object) -> Iterator[TestClient]:
    with app_client(settings_for(tmp_path), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def key(client: TestClient) -> str:
    return add_users(client, "alice")["alice"]


def assert_problem(resp: Any, status: int, code: str, instance: str) -> dict[str, Any]:
    """The response is a problem of `status` and `code` about `instance`; returns its body."""
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/problem+json", resp.headers
    body = resp.json()
    assert body.keys() >= PROBLEM_KEYS, body
    assert body["type"] == "about:blank" and body["status"] == status and body["code"] == code, body
    assert body["instance"] == instance and isinstance(body["title"], str) and body["title"], body
    assert isinstance(body["detail"], str) and body["detail"], body
    return dict(body)


def test_unknown_resource_and_unknown_route_are_404_problems(client: TestClient, key: str) -> None:
    resource = assert_problem(client.get("/v1/styles/nope", headers=bearer(key)), 404, "not_found", "/v1/styles/nope")
    assert resource["title"] == "Not Found" and resource["detail"] == "style not found"
    route = assert_problem(client.get("/v1/stylez", headers=bearer(key)), 404, "not_found", "/v1/stylez")
    assert "/v1/stylez" in route["detail"] and "errors" not in route


def test_wrong_method_is_405_with_allow(client: TestClient, key: str) -> None:
    resp = client.put("/v1/styles", headers=bearer(key))
    body = assert_problem(resp, 405, "method_not_allowed", "/v1/styles")
    assert set(resp.headers["allow"].replace(" ", "").split(",")) == {"GET", "POST"}
    assert body["detail"].startswith("PUT is not allowed on /v1/styles")


def test_401_keeps_www_authenticate(client: TestClient) -> None:
    resp = client.get("/v1/jobs", headers={"Authorization": "sd_abc"})
    body = assert_problem(resp, 401, "bad_authorization_scheme", "/v1/jobs")
    assert "add `Bearer `" in body["detail"] and resp.headers["www-authenticate"] == "Bearer"


def test_validation_errors_name_each_field_and_why(client: TestClient, key: str) -> None:
    # descriptor is optional in the form (a subject takes a class word instead): a style without one is refused
    # by the service, naming the field
    empty = client.post("/v1/styles", headers=bearer(key), data={"descriptor": ""},
                        files={"image": ("s.png", png_bytes(), "image/png")})
    body = assert_problem(empty, 422, "bad_descriptor", "/v1/styles")
    assert body["errors"] == [{"field": "body.descriptor", "message": "descriptor must not be empty"}]
    missing = client.post("/v1/styles", headers=bearer(key), files={"image": ("s.png", png_bytes(), "image/png")})
    assert assert_problem(missing, 422, "bad_descriptor", "/v1/styles")["errors"][0]["field"] == "body.descriptor"
    no_image = client.post("/v1/styles", headers=bearer(key), data={"descriptor": "ink"})
    assert assert_problem(no_image, 422, "validation_error", "/v1/styles")["errors"][0]["field"] == "body.image"
    # spaces only pass FastAPI's check: the service refuses them with its own code, and still names the field
    blank = client.post("/v1/styles", headers=bearer(key), data={"descriptor": "   "},
                        files={"image": ("s.png", png_bytes(), "image/png")})
    body = assert_problem(blank, 422, "bad_descriptor", "/v1/styles")
    assert body["errors"] == [{"field": "body.descriptor", "message": "descriptor must not be empty"}]

    query = client.get("/v1/jobs?limit=0&offset=x", headers=bearer(key))
    body = assert_problem(query, 422, "validation_error", "/v1/jobs")
    assert [(e["field"], e["message"]) for e in body["errors"]] == [
        ("query.limit", "must be at least 1"), ("query.offset", "must be a whole number")]
    assert body["errors"][0]["input"] == "0"

    generation = client.post("/v1/generations?wait=-1", headers=bearer(key), json={"prompt": "x"})
    assert assert_problem(generation, 422, "validation_error", "/v1/generations")["errors"][0]["field"] == "query.wait"
    fields = client.post("/v1/generations", headers=bearer(key),
                         json={"prompt": "", "steps": 101, "negative_prompt": "n" * 501, "colour": 1})
    found = {e["field"]: e["message"]
             for e in assert_problem(fields, 422, "validation_error", "/v1/generations")["errors"]}
    assert found == {"body.prompt": "must not be empty", "body.steps": "must be at most 100",
                     "body.negative_prompt": "must be at most 500 characters",
                     "body.colour": "is not a field this accepts"}, found
    form = client.post("/v1/generations", headers=bearer(key), data={"prompt": "x", "seed": "many"},
                       files={"init_image": ("i.png", png_bytes(), "image/png")})
    body = assert_problem(form, 422, "validation_error", "/v1/generations")
    assert [(e["field"], e["message"]) for e in body["errors"]] == [("body.seed", "must be a whole number")]


def test_body_limits_are_413_problems(client: TestClient, key: str) -> None:
    json_limit = client.app.state.settings.max_json_bytes  # type: ignore[attr-defined]
    big_json = client.post("/v1/generations", headers={**bearer(key), "Content-Type": "application/json"},
                           content=b'{"prompt": "' + b"a" * json_limit + b'"}')
    body = assert_problem(big_json, 413, "body_too_large", "/v1/generations")
    assert body["title"] == "Content Too Large" and str(json_limit) in body["detail"]
    # a multipart body past the total limit: FastAPI's own limit answered this in plain text
    upload = client.post("/v1/styles", headers=bearer(key), data={"descriptor": "ink"},
                         files={"image": ("s.png", b"\0" * (3 * 1024 * 1024), "image/png")})
    assert "limit" in assert_problem(upload, 413, "body_too_large", "/v1/styles")["detail"]
    assert upload.headers["connection"] == "close"
    # streamed without a Content-Length: cut off while it streams, with the same problem
    head = (b'--x\r\nContent-Disposition: form-data; name="descriptor"\r\n\r\nink\r\n'
            b'--x\r\nContent-Disposition: form-data; name="image"; filename="s.png"\r\n'
            b"Content-Type: image/png\r\n\r\n")
    chunked = client.post("/v1/styles", headers={**bearer(key), "Content-Type": "multipart/form-data; boundary=x"},
                          content=iter([head] + [b"\0" * 65536] * 64))
    assert_problem(chunked, 413, "body_too_large", "/v1/styles")


def test_rate_limit_is_429_with_retry_after(tmp_path: Path, api_redis: object) -> None:
    with app_client(settings_for(tmp_path, rate_limit_per_minute=1)) as client:
        key = add_users(client, "alice")["alice"]
        assert client.post("/v1/generations", headers=bearer(key), json={"prompt": "x"}).status_code == 202
        over = client.post("/v1/generations", headers=bearer(key), json={"prompt": "x"})
        body = assert_problem(over, 429, "rate_limited", "/v1/generations")
        assert 1 <= int(over.headers["retry-after"]) <= 60 and "per minute" in body["detail"]


def test_event_stream_cap_is_429_with_retry_after(tmp_path: Path, api_redis: object) -> None:
    with app_client(settings_for(tmp_path, max_streams_per_user=0)) as client:
        key = add_users(client, "alice")["alice"]
        job = client.post("/v1/styles", headers=bearer(key), data={"descriptor": "ink"},
                          files={"image": ("s.png", png_bytes(), "image/png")}).json()["job"]["id"]
        path = f"/v1/jobs/{job}/events"
        resp = client.get(path, headers={**bearer(key), "Accept": "text/event-stream"})
        assert_problem(resp, 429, "too_many_streams", path)
        assert int(resp.headers["retry-after"]) > 0


def test_pool_exhaustion_and_readyz_are_503_with_retry_after(client: TestClient, key: str, tmp_path: Path) -> None:
    from storage.db import make_engine, make_sessionmaker

    state: Any = client.app.state  # type: ignore[attr-defined]
    tiny = make_engine(state.settings.resolved_database_url, pool_size=1, max_overflow=0, pool_timeout=0.2)
    old = state.engine, state.sessionmaker
    state.engine, state.sessionmaker = tiny, make_sessionmaker(tiny)
    try:
        with tiny.connect():  # the only connection
            busy = client.get("/v1/jobs", headers=bearer(key))
        assert_problem(busy, 503, "database_busy", "/v1/jobs")
        assert int(busy.headers["retry-after"]) >= 1
    finally:
        state.engine, state.sessionmaker = old
        tiny.dispose()
    # a broker nobody listens on: /readyz is a problem that keeps its `checks`
    with app_client(settings_for(tmp_path / "down", broker_url="redis://127.0.0.1:1/0")) as down:
        ready = down.get("/readyz")
        body = assert_problem(ready, 503, "not_ready", "/readyz")
        assert body["checks"]["database"] == "ok" and body["checks"]["broker"].startswith("unreachable")
        assert "broker" in body["detail"] and int(ready.headers["retry-after"]) >= 1


def test_unhandled_exception_is_a_generic_500_and_logged(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    def explode() -> None:
        raise RuntimeError("secret-internal-state /srv/styledrop/api")

    client.app.add_api_route("/v1/test-explode", explode)  # type: ignore[attr-defined]
    with caplog.at_level(logging.ERROR, logger="api.http.errors"):
        resp = client.get("/v1/test-explode")
    body = assert_problem(resp, 500, "internal_error", "/v1/test-explode")
    assert "secret" not in resp.text and "Traceback" not in resp.text and "RuntimeError" not in resp.text
    assert body["title"] == "Internal Server Error"
    logged = [r for r in caplog.records if r.name == "api.http.errors" and r.levelno == logging.ERROR]
    assert logged and logged[0].exc_info and "secret-internal-state" in str(logged[0].exc_info[1])
    assert "/v1/test-explode" in logged[0].getMessage()


def test_openapi_documents_the_problem_on_every_operation(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    problem = doc["components"]["schemas"]["Problem"]
    assert set(problem["properties"]) >= PROBLEM_KEYS and PROBLEM_KEYS - {"type"} <= set(problem["required"])
    assert problem["properties"]["errors"]["anyOf"][0]["items"]["$ref"] == "#/components/schemas/ProblemField"
    assert "HTTPValidationError" not in doc["components"]["schemas"]  # FastAPI's own 422 shape is gone
    operations = [(path, method, op) for path, item in doc["paths"].items() for method, op in item.items()]
    assert len(operations) >= 30
    for path, method, op in operations:
        errors = {status: r for status, r in op["responses"].items() if status[0] in "45"}
        assert {"422", "500", "503"} <= errors.keys(), (method, path, sorted(op["responses"]))
        for status, response in errors.items():
            assert response["content"] == {
                "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}, (method, path)
            if status in ("429", "503"):
                assert "Retry-After" in response["headers"], (method, path, status)
    assert "401" in doc["paths"]["/v1/styles"]["post"]["responses"]
    assert "429" in doc["paths"]["/v1/styles"]["post"]["responses"]
    assert "413" in doc["paths"]["/v1/generations"]["post"]["responses"]


def test_readme_error_example_is_what_the_api_answers(client: TestClient, key: str) -> None:
    section = README.read_text().split("### Errors", 1)[1].split("\n## ", 1)[0]
    example = json.loads(re.findall(r"```json\n(.*?)```", section, flags=re.S)[0])
    command = re.findall(r"```bash\n(.*?)```", section, flags=re.S)[0]
    assert "/v1/styles" in command and "-F descriptor=" in command
    resp = client.post("/v1/styles", headers=bearer(key), data={"descriptor": ""},
                       files={"image": ("style.png", png_bytes(), "image/png")})
    assert resp.json() == example
    for code in ("validation_error", "not_found", "method_not_allowed", "body_too_large", "rate_limited",
                 "too_many_streams", "database_busy", "not_ready", "internal_error", "bad_descriptor"):
        assert f"`{code}`" in section, code


def test_pages_keep_their_html_error_pages(client: TestClient, key: str) -> None:
    signed_in = client.post("/signin", data={"api_key": key, "next": "/styles"}, follow_redirects=False)
    assert signed_in.status_code == 303
    for path in ("/styles/nope", "/gallery?page=0"):
        page = client.get(path, headers={"Accept": "text/html"})
        assert page.status_code == 404 and page.headers["content-type"].startswith("text/html"), path
        assert "<html" in page.text
