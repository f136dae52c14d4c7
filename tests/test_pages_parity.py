"""Pages that offer what the API takes: the new-style form (several captioned images, a subject, a webhook), the
default training steps on the demo model and on real weights, a mistyped page path as an HTML page while API
paths and JSON clients keep the problem document, a Copy button for a new key."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from storage.settings import DEMO_TRAIN_STEPS, Settings
from testkit.images import style_png
from tests.helpers.app import app_client
from tests.helpers.pages import sign_in
from trainer.contracts.limits import DEFAULT_TRAIN_STEPS


@pytest.fixture
def demo_client(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(data_dir=tmp_path / "data", secret_key="s", model="tiny", rate_limit_per_minute=1000)
    with app_client(settings) as client:
        yield client


def test_the_new_style_form_takes_several_captioned_images_a_subject_and_a_webhook(pages_client: TestClient,
                                                                                    pages_keys) -> None:
    sign_in(pages_client, pages_keys["alice"])
    page = pages_client.get("/styles/new").text
    assert re.search(r'<input id="image" name="image" type="file"[^>]* multiple', page)
    assert 'data-max-images="5"' in page and "up to 5 images" in page  # settings.max_style_images
    assert '<input type="radio" name="kind" value="subject">' in page and '<label for="class_word">' in page
    assert '<input id="webhook" name="webhook" type="url"' in page
    # real weights: the recipe's steps are the default the form shows
    assert f'placeholder="{DEFAULT_TRAIN_STEPS}"' in page and "about a minute" not in page


def test_the_demo_model_trains_a_short_default_from_one_home(demo_client: TestClient) -> None:
    from tests.helpers.app import add_users

    keys = add_users(demo_client, "alice")
    sign_in(demo_client, keys["alice"])
    page = demo_client.get("/styles/new").text
    assert f'placeholder="{DEMO_TRAIN_STEPS}"' in page and "about a minute" in page
    created = demo_client.post("/v1/styles", headers={"Authorization": f"Bearer {keys['alice']}"},
                               files={"image": ("s.png", style_png(), "image/png")}, data={"descriptor": "ink"})
    assert created.status_code == 202, created.text
    assert created.json()["job"]["total_steps"] == DEMO_TRAIN_STEPS  # what the form promised
    assert Settings(model="amused-256").default_train_steps == DEFAULT_TRAIN_STEPS
    assert Settings(model="tiny", train_steps=7).default_train_steps == 7


def test_several_captioned_images_show_on_the_style_page(pages_client: TestClient, pages_keys) -> None:
    alice = {"Authorization": f"Bearer {pages_keys['alice']}"}
    created = pages_client.post(
        "/v1/styles", headers=alice, data={"descriptor": "flat vector", "caption": ["a fox", ""]},
        files=[("image", ("a.png", style_png(), "image/png")), ("image", ("b.png", style_png((9, 9, 9)), "image/png"))],
    )
    assert created.status_code == 202, created.text
    style_id = created.json()["style"]["id"]
    sign_in(pages_client, pages_keys["alice"])
    page = pages_client.get(f"/styles/{style_id}").text
    assert "(2 images)" in page
    assert f'src="/v1/styles/{style_id}/images/0"' in page and f'src="/v1/styles/{style_id}/images/1"' in page
    assert re.search(r'<span class="small ">a fox</span>', page)
    assert '<span class="small muted">an image in flat vector style</span>' in page  # what it trains on
    assert 'id="job-title" data-version="1">Training v1 · first training<' in page


def test_a_mistyped_page_path_is_an_html_page_and_api_paths_stay_json(pages_client: TestClient, pages_keys) -> None:
    browser = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
    signed_out = pages_client.get("/stlyes", headers=browser)
    assert signed_out.status_code == 404 and signed_out.headers["content-type"].startswith("text/html")
    assert "Page not found" in signed_out.text and "There is no page at /stlyes" in signed_out.text
    sign_in(pages_client, pages_keys["alice"])
    signed_in = pages_client.get("/galery", headers=browser)
    assert signed_in.status_code == 404 and '<a href="/gallery">Gallery</a>' in signed_in.text  # the site's header
    for path, headers in (("/v1/nothing", browser), ("/stlyes", {"Accept": "application/json"}),
                          ("/stlyes", {})):
        answer = pages_client.get(path, headers=headers)
        assert answer.status_code == 404 and answer.headers["content-type"] == "application/problem+json", path
        assert answer.json()["code"] == "not_found"
    assert pages_client.post("/styles", headers=browser).status_code == 405  # a wrong method is not a 404 page


def test_a_new_key_has_a_copy_button_and_times_have_one_format(pages_client: TestClient, pages_keys) -> None:
    sign_in(pages_client, pages_keys["alice"])
    for path in ("/keys",):
        page = pages_client.get(path).text
        assert '<button type="button" class="secondary small" id="copy-key">Copy</button>' in page
    sign_in(pages_client, pages_keys["admin"])
    assert 'id="copy-key"' in pages_client.get("/admin").text
    alice = {"Authorization": f"Bearer {pages_keys['alice']}"}
    pages_client.post("/v1/styles", headers=alice, data={"descriptor": "ink"},
                      files={"image": ("a.png", style_png(), "image/png")})
    sign_in(pages_client, pages_keys["alice"])
    listing = pages_client.get("/styles").text
    assert re.search(r"· \d{4}-\d\d-\d\d \d\d:\d\d UTC</p>", listing)
    js = pages_client.get("/static/styledrop.js").text
    assert 'toISOString().slice(0, 16).replace("T", " ")} UTC' in js  # the same format where the script writes times
