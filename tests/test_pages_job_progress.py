"""The job panel shows the phase a user waits on before or after the steps (an automatic round's candidates, the
previews) with its count and ETA, and a round's picks as images; the style page has the samples' progress line
(filled by styledrop.js from GET /v1/styles/{id}/samples)."""

from __future__ import annotations

import html
import re

from fastapi.testclient import TestClient

from storage.models import TrainingJob
from tests.helpers.pages import make_style, sign_in, trained


def _phase_shown(page: str) -> str | None:
    """The phase line's words as a reader gets them, or None while it is hidden."""
    match = re.search(r'<p class="meta" data-role="phase-line"([^>]*)>(.*?)</p>', page, re.S)
    assert match, "no phase line"
    if re.search(r"\shidden$", match.group(1).strip()):
        return None
    return " ".join(re.sub(r"<[^>]+>", "", match.group(2)).split())


def _set_job(client: TestClient, job_id: str, **values: object) -> None:
    with client.app.state.sessionmaker() as s:  # as the train worker leaves it
        job = s.get(TrainingJob, job_id)
        assert job is not None
        for k, v in values.items():
            setattr(job, k, v)
        s.commit()


def test_the_job_panel_renders_the_phase_its_eta_and_the_picks(pages_client: TestClient,
                                                               pages_keys: dict[str, str]) -> None:
    style_id, job_id = make_style(pages_client, pages_keys["alice"], "pencil sketch")
    sign_in(pages_client, pages_keys["alice"])
    assert _phase_shown(pages_client.get(f"/styles/{style_id}").text) is None  # queued: no phase

    _set_job(pages_client, job_id, state="running",
             phase={"name": "rendering_candidates", "done": 12, "total": 40, "eta_seconds": 65.4},
             picks=[{"prompt": "A cat <b> in pencil sketch style", "candidate": 3, "text_score": 0.3,
                     "style_score": 0.5, "score": 0.425, "image_key": "picks/aa/x.png"}])
    page = pages_client.get(f"/styles/{style_id}").text
    assert _phase_shown(page) == "Rendering candidates 12/40 · ETA 1 min 5 s"
    words = re.search(r'data-words="([^"]*)"', page)  # what styledrop.js names the phases with
    assert words and '"rendering_candidates": "Rendering candidates"' in html.unescape(words.group(1))
    assert (f'<img src="http://testserver/v1/jobs/{job_id}/picks/0" '
            'alt="Picked: A cat &lt;b&gt; in pencil sketch style"') in page
    assert "score 0.425" in page

    for phase, shown in (({"name": "scoring", "done": 0, "total": 40, "eta_seconds": None},
                          "Scoring candidates 0/40 · ETA —"),
                         ({"name": "rendering_previews", "done": 1, "total": 2, "eta_seconds": 4000},
                          "Rendering previews 1/2 · ETA 1 h 6 min"),
                         ({"name": "training", "done": 5, "total": 60, "eta_seconds": 3.0}, None)):  # the Step line
        _set_job(pages_client, job_id, phase=phase)
        assert _phase_shown(pages_client.get(f"/styles/{style_id}").text) == shown

    _set_job(pages_client, job_id, phase={"name": "rendering_candidates", "done": 40, "total": 40, "eta_seconds": 0})
    trained(pages_client, job_id)  # final: the phase is over, the picks stay
    page = pages_client.get(f"/styles/{style_id}").text
    assert _phase_shown(page) is None and f"/v1/jobs/{job_id}/picks/0" in page
    assert re.search(r'<p class="small" id="samples-progress"[^>]*\shidden>', page)  # filled while samples run
