"""What the pages say about a style's training over time: every job with the version it trains (or trained) and
what it trained on, and the feedback samples grouped by the version that made them, each marked when a round
used it (StyleDrop's iterative training, arXiv 2306.00983 §3.3; a round is a job whose `params.round` is set,
storage/job_params.py).

Page-only reads: the JSON API has the same facts in `GET /v1/styles/{id}/versions`, the jobs' `params` and the
generations; these gather them so the page reads as a history. A fixed number of queries whatever the history's
length.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.services.versions import default_of
from storage.job_params import JobParams
from storage.models import Adapter, Generation, Style, TrainingJob
from storage.resources import JobPublic, job_views
from storage.states import JOB_UNFINISHED, GenerationState
from trainer.contracts.prompts import feedback_prompts

HISTORY_LIMIT = 50  # jobs shown on a style's page, newest first
SAMPLE_GENERATIONS_LIMIT = 300  # sample generations read for a style's page (10 prompts x 30 versions)


def describe(params: dict[str, Any], first: bool) -> str:
    """What a job trains on, in words: "first training", "round from 3 picked images", ..."""
    try:
        parsed = JobParams.model_validate(params)
    except ValueError:
        return "training"
    feedback = parsed.round
    if feedback is None:
        return "first training" if first else "training again on the references"
    if feedback.mode == "human":
        n = len(feedback.selection)
        return f"feedback round from {n} picked image{'s' if n != 1 else ''}"
    return (f"automatic feedback round: v{feedback.version} over {feedback.prompts} prompts × "
            f"{feedback.per_prompt} candidates, CLIP picks the best")


@dataclass(frozen=True)
class Entry:
    """One training job of the style, as its history shows it."""

    job: JobPublic
    version: int | None  # the version it made, or will make if it succeeds; None: it made none
    what: str  # describe()
    adapter_id: str | None = None  # its adapter, live or deleted
    adapter_deleted: bool = False
    is_default: bool = False
    text_score: float | None = None
    style_score: float | None = None

    @property
    def unfinished(self) -> bool:
        return self.job.state in JOB_UNFINISHED

    @property
    def title(self) -> str:
        """The job panel's heading: "Training v2 · feedback round from 3 picked images"."""
        if self.unfinished:
            return f"Training v{self.version} · {self.what}"
        if self.version is not None:
            return f"Trained v{self.version} · {self.what}"
        return f"No version ({self.job.state}) · {self.what}"


@dataclass
class SampleSet:
    """The feedback samples one version made (newest generations last), each image with what a pick names."""

    version: int
    adapter_id: str
    images: list[dict[str, Any]] = field(default_factory=list)

    @property
    def prompts(self) -> int:
        return len({image["prompt"] for image in self.images})

    @property
    def used(self) -> int:
        return sum(1 for image in self.images if image["used_for"] is not None)


@dataclass(frozen=True)
class History:
    entries: list[Entry]  # newest job first
    samples: list[SampleSet]  # newest version first
    next_version: int  # the version the next job will make

    @property
    def busy(self) -> Entry | None:
        """The job still queued or running (at most one per style: the API refuses a second)."""
        return next((e for e in self.entries if e.unfinished), None)

    @property
    def live(self) -> list[Entry]:
        """The versions one can generate with, newest first."""
        return [e for e in self.entries if e.adapter_id is not None and not e.adapter_deleted]

    @property
    def default(self) -> Entry | None:
        return next((e for e in self.entries if e.is_default), None)


def job_titles(session: Session, jobs: Sequence[JobPublic]) -> dict[str, str]:
    """Each job's heading (Entry.title) for the "My styles" list, in three queries for the whole list."""
    if not jobs:
        return {}
    ids = [j.id for j in jobs]
    made = dict(session.execute(select(Adapter.job_id, Adapter.version).where(Adapter.job_id.in_(ids))).all())
    style_ids = list({j.style_id for j in jobs})
    top = dict(session.execute(select(Adapter.style_id, func.max(Adapter.version))
                               .where(Adapter.style_id.in_(style_ids)).group_by(Adapter.style_id)).all())
    firsts: dict[str, str] = {}
    for style_id, job_id in session.execute(select(TrainingJob.style_id, TrainingJob.id)
                                            .where(TrainingJob.style_id.in_(style_ids))
                                            .order_by(TrainingJob.queued_at.desc(), TrainingJob.id.desc())):
        firsts[style_id] = job_id  # the last one written is the oldest
    out = {}
    for j in jobs:
        version = made.get(j.id)
        if version is None and j.state in JOB_UNFINISHED:
            version = int(top.get(j.style_id) or 0) + 1
        out[j.id] = Entry(job=j, version=version, what=describe(j.params, firsts.get(j.style_id) == j.id)).title
    return out


def style_history(session: Session, style: Style) -> History:
    rows = session.scalars(select(TrainingJob).where(TrainingJob.style_id == style.id)
                           .order_by(TrainingJob.queued_at.desc(), TrainingJob.id.desc())
                           .limit(HISTORY_LIMIT)).all()
    adapters = {a.job_id: a for a in session.scalars(select(Adapter).where(Adapter.style_id == style.id))}
    live = sorted((a for a in adapters.values() if a.deleted_at is None), key=lambda a: a.version)
    default = default_of(style, live)
    next_version = max((a.version for a in adapters.values()), default=0) + 1
    entries = []
    oldest = rows[-1].id if rows else None
    for job in job_views(session, rows):
        adapter = adapters.get(job.id)
        version = adapter.version if adapter else (next_version if job.state in JOB_UNFINISHED else None)
        entries.append(Entry(
            job=job, version=version, what=describe(job.params, job.id == oldest and len(rows) < HISTORY_LIMIT),
            adapter_id=adapter.id if adapter else None,
            adapter_deleted=adapter is not None and adapter.deleted_at is not None,
            is_default=adapter is not None and adapter is default,
            text_score=adapter.text_score if adapter else None, style_score=adapter.style_score if adapter else None,
        ))
    return History(entries=entries, samples=_samples(session, style, list(adapters.values()), entries),
                   next_version=next_version)


def _samples(session: Session, style: Style, adapters: list[Adapter], entries: list[Entry]) -> list[SampleSet]:
    """The succeeded generations over the feedback prompts, per version, with the rounds that used each image."""
    if style.kind != "style" or not adapters:
        return []
    used: dict[tuple[str, int], int] = {}
    for e in reversed(entries):  # oldest first: an image picked twice is marked with its first round
        parsed = JobParams.model_validate(e.job.params) if e.job.params.get("round") else None
        if parsed is not None and parsed.round is not None and parsed.round.mode == "human" and e.version:
            for pick in parsed.round.selection:
                used.setdefault((pick.generation_id, pick.index), e.version)
    by_id = {a.id: a for a in adapters}
    gens = session.scalars(select(Generation).where(
        Generation.owner_id == style.owner_id, Generation.adapter_id.in_(list(by_id)),
        Generation.state == GenerationState.SUCCEEDED, Generation.prompt.in_(feedback_prompts(style.descriptor)),
    ).order_by(Generation.queued_at.desc(), Generation.id.desc()).limit(SAMPLE_GENERATIONS_LIMIT)).all()[::-1]
    sets: dict[str, SampleSet] = {}
    for g in gens:
        adapter = by_id[g.adapter_id or ""]
        target = sets.setdefault(adapter.id, SampleSet(version=adapter.version, adapter_id=adapter.id))
        for i in range(len(g.image_keys or [])):
            target.images.append({
                "generation_id": g.id, "index": i, "prompt": g.prompt, "url": f"/v1/generations/{g.id}/images/{i}",
                "text_score": g.text_scores[i] if g.text_scores and i < len(g.text_scores) else None,
                "used_for": used.get((g.id, i)),
            })
    return sorted(sets.values(), key=lambda s: -s.version)

