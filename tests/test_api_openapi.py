"""The OpenAPI document is one a client can be generated from: explicit, unique operation ids (no ids built from path
and verb), a summary, a description and examples on every operation, named schemas, binary file downloads, no
internal notes; and the independent generator openapi-python-client turns it into a client without a warning."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from storage.settings import Settings
from tests.helpers.app import app_client

AUTO_ID = re.compile(r"_(get|post|put|patch|delete)$|_v1_|__")  # FastAPI's default: name + path + method
INTERNAL = re.compile(r"\b[\w/]+\.py\b|\b(?:api|trainer|storage|worker|testkit)/|\bsettings\.\w")
BINARY_TYPES = ("image/", "application/octet-stream")


@pytest.fixture(scope="module")
def openapi(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("openapi") / "data", secret_key="x")
    with app_client(settings) as client:
        resp = client.get("/openapi.json")
        assert resp.status_code == 200
        yield resp.json()


def _operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method, op) for path, item in doc["paths"].items() for method, op in item.items()]


def _resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """The schema a `$ref` names; the non-null branch of an optional body; an array's item schema."""
    while True:
        if "$ref" in schema:
            schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
        elif "anyOf" in schema and not schema.get("examples"):
            schema = next(s for s in schema["anyOf"] if s.get("type") != "null")
        elif schema.get("type") == "array" and not schema.get("examples"):
            schema = schema["items"]
        else:
            return schema


def _has_example(doc: dict[str, Any], media: dict[str, Any]) -> bool:
    return bool(media.get("example") or media.get("examples") or _resolve(doc, media.get("schema", {})).get("examples"))


def _texts(value: Any) -> Iterator[str]:
    """Every description and summary in the document."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key in ("description", "summary") and isinstance(item, str):
                yield item
            else:
                yield from _texts(item)
    elif isinstance(value, list):
        for item in value:
            yield from _texts(item)


def test_operation_ids_are_explicit_and_unique(openapi: dict[str, Any]) -> None:
    ids = [op.get("operationId", "") for _, _, op in _operations(openapi)]
    assert len(ids) >= 45
    assert not [i for i in ids if AUTO_ID.search(i) or not re.fullmatch(r"[a-z][a-z0-9_]*", i)], ids
    assert len(set(ids)) == len(ids), sorted(i for i in ids if ids.count(i) > 1)
    by_path = {(path, method): op["operationId"] for path, method, op in _operations(openapi)}
    assert by_path[("/v1/jobs", "get")] == "list_jobs" and by_path[("/v1/admin/jobs", "get")] == "admin_list_jobs"
    assert by_path[("/v1/generations/{generation_id}/images/{n}", "get")] == "get_generation_image"


def test_every_operation_has_a_summary_a_description_and_examples(openapi: dict[str, Any]) -> None:
    summaries = []
    for path, method, op in _operations(openapi):
        where = f"{method.upper()} {path}"
        assert op.get("summary") and op.get("description", "").strip(), where
        summaries.append(op["summary"])
        for media_type, media in op.get("requestBody", {}).get("content", {}).items():
            assert _has_example(openapi, media), (where, "request", media_type)
        shown = bool(op.get("requestBody"))
        for status, response in op["responses"].items():
            for media_type, media in response.get("content", {}).items() if status.startswith("2") else ():
                if media_type.startswith(BINARY_TYPES):  # files: declared as binary, nothing to exemplify
                    assert media["schema"] == {"type": "string", "format": "binary"}, (where, media_type)
                elif media_type != "text/event-stream":
                    assert _has_example(openapi, media), (where, status, media_type)
                    shown = True
        for parameter in op.get("parameters", []):
            if parameter["in"] == "path":  # every id in a path comes with one
                assert parameter["schema"].get("examples"), (where, parameter["name"])
                shown = True
        assert shown, f"{where}: no example anywhere"
    assert len(set(summaries)) == len(summaries), sorted(s for s in summaries if summaries.count(s) > 1)
    by_path = {(path, method): op["summary"] for path, method, op in _operations(openapi)}
    assert by_path[("/v1/admin/keys", "get")] != by_path[("/v1/keys", "get")]  # user and admin operations differ


def test_schemas_are_named_and_page_routes_stay_out(openapi: dict[str, Any]) -> None:
    names = list(openapi["components"]["schemas"])
    assert not [n for n in names if n.startswith("Body_") or not re.fullmatch(r"[A-Z][A-Za-z0-9]*", n)], names
    form = openapi["paths"]["/v1/styles"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert form["schema"] == {"$ref": "#/components/schemas/StyleCreateForm"}
    for page in ("JobPage", "StylePage", "GenerationPage", "AdapterPage", "ApiKeyPage", "AdminJobPage", "UserPage",
                 "VersionPage", "JobEventPage"):
        assert set(openapi["components"]["schemas"][page]["properties"]) == {"items", "next"}, page
    assert all(p.startswith("/v1/") or p in ("/healthz", "/readyz", "/metrics") for p in openapi["paths"])


def test_public_text_has_no_internal_notes(openapi: dict[str, Any]) -> None:
    """No module paths and no settings' Python names: the env var (STYLEDROP_...) or the value instead."""
    setting_names = [n for n in Settings.model_fields if "_" in n]
    for text in _texts(openapi):
        assert not INTERNAL.search(text), text
        named = [n for n in setting_names if re.search(rf"(?<![A-Za-z_]){n}(?![A-Za-z_])", text)]
        assert not named, (named, text)


def test_the_internal_note_check_catches_what_it_should() -> None:
    assert INTERNAL.search("limits live in trainer/limits.py, which api/ cannot import")
    assert INTERNAL.search("At most settings.max_images_per_request.")
    assert AUTO_ID.search("get_generation_image_v1_generations__generation_id__images__n__get")
    assert not INTERNAL.search("STYLEDROP_MAX_IMAGES_PER_REQUEST (4 by default)")


def test_openapi_python_client_generates_a_client_without_warnings(openapi: dict[str, Any], tmp_path: Path) -> None:
    """The generator named in the test extra, run as a user would; image/png is read as bytes (its documented
    `content_type_overrides`), and each method is named after its operation id."""
    tool = shutil.which("openapi-python-client", path=str(Path(sys.executable).parent))
    assert tool, "openapi-python-client is in the test extra (pip install -e '.[test]')"
    (tmp_path / "openapi.json").write_text(json.dumps(openapi))
    (tmp_path / "config.yaml").write_text("content_type_overrides:\n  image/png: application/octet-stream\n")
    run = subprocess.run([tool, "generate", "--path", "openapi.json", "--config", "config.yaml", "--meta", "none",
                          "--output-path", "client"], cwd=tmp_path, capture_output=True, text=True, timeout=240)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    assert "warning" not in output.lower(), output
    methods = {p.stem for p in (tmp_path / "client" / "api").rglob("*.py") if p.stem != "__init__"}
    assert methods == {op["operationId"] for _, _, op in _operations(openapi)}
