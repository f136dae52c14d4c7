"""What a new user meets first: the demo-model banner and the OpenAPI pages working without internet access."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.helpers.app import app_client

DEMO = "Demo model."


def _client(tmp_path: Path, model: str) -> Iterator[TestClient]:
    from storage.settings import Settings

    with app_client(Settings(data_dir=tmp_path / "data", secret_key="s", model=model)) as client:
        yield client


@pytest.fixture
def tiny_client(tmp_path: Path) -> Iterator[TestClient]:
    yield from _client(tmp_path, "tiny")


def test_every_page_says_when_the_model_is_the_random_demo_one(tiny_client: TestClient) -> None:
    page = tiny_client.get("/signin")
    assert page.status_code == 200 and DEMO in page.text and "STYLEDROP_MODEL=amused-256" in page.text


def test_a_directory_holding_the_tiny_preset_is_the_demo_model_too(tmp_path: Path, engine_tiny_dir: Path) -> None:
    for client in _client(tmp_path, str(engine_tiny_dir)):
        assert DEMO in client.get("/signin").text


def test_real_weights_show_no_demo_banner(tmp_path: Path) -> None:
    for client in _client(tmp_path, "amused-256"):
        assert DEMO not in client.get("/signin").text


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_openapi_pages_load_every_asset_from_the_service(tiny_client: TestClient, path: str) -> None:
    page = tiny_client.get(path)
    assert page.status_code == 200
    urls = re.findall(r"""(?:src|href)=["']([^"']+)["']|url: ?["']([^"']+)["']""", page.text)
    urls = [a or b for a, b in urls]
    assert urls, page.text
    assert [u for u in urls if not u.startswith("/")] == []  # nothing from a CDN
    for url in urls:
        asset = tiny_client.get(url)
        assert asset.status_code == 200 and len(asset.content) > 1000, url
