"""The style page's versions and feedback rounds as a history, rendered server-side (the browser flow is in
tests/test_browser_rounds.py): which version each job trains, samples per version kept apart from the gallery,
used picks marked, one control per state."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient
from sqlalchemy import update

from storage.models import Adapter, Generation
from tests.helpers.pages import finished_generations, make_style, sign_in, trained
from trainer.contracts.prompts import feedback_prompts


def _section(page: str, start: str, end: str) -> str:
    return page[page.index(start):page.index(end, page.index(start))]


def test_a_style_page_reads_as_a_history_of_versions_rounds_and_samples(pages_client: TestClient,
                                                                        pages_keys: dict[str, str]) -> None:
    key = pages_keys["alice"]
    bearer = {"Authorization": f"Bearer {key}"}
    style_id, job_id = make_style(pages_client, key, "pencil sketch")
    v1 = trained(pages_client, job_id)
    sign_in(pages_client, key)

    # v1 trained, no samples: make samples or an automatic round; no round to start yet
    page = pages_client.get(f"/styles/{style_id}").text
    assert "No samples of v1 yet." in page and 'id="make-samples"' in page and 'id="automatic-round"' in page
    assert 'id="start-round"' not in page and "Round 2: train v2" in page
    assert f'href="/v1/adapters/{v1}/file"' in page  # the default version is what the page generates with
    assert re.search(r'Delete adapter <span data-role="version">v1</span>', page)
    assert 'id="job-title" data-version="1">Trained v1 · first training<' in page
    assert re.search(rf'<option value="{v1}" selected>v1 \(default\)</option>', page)  # the version menu

    prompts = feedback_prompts("pencil sketch")[:2]
    samples = finished_generations(pages_client, key, v1, prompts, 5)
    other = finished_generations(pages_client, key, v1, ["a dog"], 3)  # no feedback prompt: a gallery image
    with pages_client.app.state.sessionmaker() as s:
        s.execute(update(Adapter).where(Adapter.id == v1).values(text_score=0.3125, style_score=0.70491))
        s.execute(update(Generation).where(Generation.id == samples[0]).values(text_scores=[0.25, 0.5]))
        s.commit()
    page = pages_client.get(f"/styles/{style_id}").text
    assert "0.3125" in page and "0.7049" in page and '<span class="badge">default</span>' in page
    rounds = page[page.index('id="rounds"'):]
    ticks = re.findall(r'data-generation-id="(\w+)" data-index="(\d)"', rounds)
    assert sorted(ticks) == sorted((g, str(i)) for g in samples for i in range(2))
    assert "Samples of v1: 4 images over 2 prompts" in rounds and "text 0.250" in rounds
    assert re.search(r'id="start-round">Start round 2<', rounds)
    # samples are not gallery images; the other image is
    gallery = _section(page, 'id="gallery"', 'All your images')
    assert other[0] in gallery and not any(g in gallery for g in samples)
    assert other[0] in pages_client.get("/gallery").text
    assert not any(f'data-generation-id="{g}"' in pages_client.get("/gallery").text for g in samples)

    # a human round on two picks is queued: it trains v2, and nothing else can start meanwhile
    picks = [{"generation_id": samples[0], "index": 1}, {"generation_id": samples[1], "index": 0}]
    r = pages_client.post(f"/v1/styles/{style_id}/rounds", headers=bearer, json={"mode": "human", "selection": picks})
    assert r.status_code == 202, r.text
    round_job = r.json()["id"]
    page = pages_client.get(f"/styles/{style_id}").text
    assert 'id="job-title" data-version="2">Training v2 · feedback round from 2 picked images<' in page
    assert "v2 is training (feedback round from 2 picked images)" in page
    for control in ('id="make-samples"', 'id="automatic-round"', 'id="start-round"', 'class="pick"'):
        assert control not in page, control
    assert re.search(r'<tr data-job-id="' + round_job + r'"\s+data-state="queued">\s*<th scope="row"[^>]*>v2<', page)
    assert "Samples of v1: 4 images over 2 prompts · 2 used in a round" in page  # kept as history, read-only
    assert page.count("used for v2") == 2
    listing = pages_client.get("/styles").text
    assert "Training v2 · feedback round from 2 picked images" in listing

    # v2 trained: it is the default and the next round is round 3 over v2's samples; v1's are earlier samples
    v2 = trained(pages_client, round_job)
    page = pages_client.get(f"/styles/{style_id}").text
    assert 'data-version="2">Trained v2 · feedback round from 2 picked images<' in page
    assert "No samples of v2 yet." in page and "Round 3: train v3" in page and 'id="start-round"' not in page
    earlier = page[page.index("Earlier samples"):]
    assert '<details class="sample-set" data-version="1" >' in earlier  # collapsed
    assert earlier.count("used for v2") == 2 and 'class="pick"' not in earlier
    assert re.search(r'Delete adapter <span data-role="version">v2</span>', page)
    menu = rf'<option value="{v2}" selected>v2 \(default\)</option>\s*<option value="{v1}" >v1</option>'
    assert re.search(menu, page)
    history = _section(page, 'class="versions history"', "</table>")
    assert history.index('data-version="2"') < history.index('data-version="1"')  # newest first
    assert 'aria-label="Make v1 the default"' in history


def test_deleted_versions_stay_in_the_history(pages_client: TestClient, pages_keys: dict[str, str]) -> None:
    key = pages_keys["alice"]
    style_id, job_id = make_style(pages_client, key, "charcoal")
    v1 = trained(pages_client, job_id)
    assert pages_client.delete(f"/v1/adapters/{v1}", headers={"Authorization": f"Bearer {key}"}).status_code == 204
    sign_in(pages_client, key)
    page = pages_client.get(f"/styles/{style_id}").text
    history = _section(page, 'class="versions history"', "</table>")
    assert ">v1<" in history and "adapter deleted" in history
    assert "Feedback rounds start once a version is trained." in page
    assert re.search(r'id="train-steps" type="number" min="1" max="\d+"\s+value="20"', page)  # the last job's steps
    assert "it makes v2" in page
