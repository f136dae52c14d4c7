"""The style page's versions and feedback-round controls, rendered server-side (the browser flow is in
tests/test_browser_rounds.py)."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient
from sqlalchemy import update

from storage.models import Adapter, Generation
from tests.helpers.pages import finished_generations, make_style, sign_in, trained
from trainer.contracts.prompts import feedback_prompts


def test_style_page_lists_versions_with_scores_and_the_samples_to_pick(pages_client: TestClient,
                                                                       pages_keys: dict[str, str]) -> None:
    style_id, job_id = make_style(pages_client, pages_keys["alice"], "pencil sketch")
    v1 = trained(pages_client, job_id)
    sign_in(pages_client, pages_keys["alice"])
    page = pages_client.get(f"/styles/{style_id}").text
    assert "No samples yet." in page and 'id="make-samples"' in page and 'id="automatic-round"' in page
    assert re.search(r'id="start-round"\s+hidden', page)
    assert f'href="/v1/adapters/{v1}/file"' in page  # the default version is what the page generates with

    prompts = feedback_prompts("pencil sketch")[:2]
    samples = finished_generations(pages_client, pages_keys["alice"], v1, prompts, 5)
    other = finished_generations(pages_client, pages_keys["alice"], v1, ["a dog"], 3)  # no feedback prompt: no box
    with pages_client.app.state.sessionmaker() as s:
        s.execute(update(Adapter).where(Adapter.id == v1).values(text_score=0.3125, style_score=0.70491))
        s.execute(update(Generation).where(Generation.id == samples[0]).values(text_scores=[0.25, 0.5]))
        s.commit()
    page = pages_client.get(f"/styles/{style_id}").text
    assert "0.3125" in page and "0.7049" in page and '<span class="badge">default</span>' in page
    ticks = re.findall(r'data-generation-id="(\w+)" data-index="(\d)"', page)
    assert sorted(ticks) == sorted((g, str(i)) for g in samples for i in range(2))
    assert other[0] not in {g for g, _ in ticks}
    assert "text 0.250" in page and re.search(r'id="start-round"\s*>Start round 2<', page)
