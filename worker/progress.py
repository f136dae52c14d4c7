"""Progress written where users read it: the sampler's per-round callback for the generations it is rendering
(`StepRecorder`), and the phases of a training job before and after its steps (`PhaseRecorder`: an automatic
round's candidates rendered and scored, the previews), each on the job's row and as a `phase` event."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from sqlalchemy import CursorResult, select, update

from storage import jobs
from storage.models import TrainingJob, utcnow
from storage.states import JOB_ACTIVE, EventKind, JobState
from trainer.feedback import PhaseProgress
from worker.runtime import Runtime

logger = logging.getLogger(__name__)

WRITE_EVERY_SECONDS = 1.0  # a database write per round would cost more than a tiny model's round


class BatchGone(Exception):
    """None of the batch's generations is this worker's any more (cancelled, or taken over): stop sampling."""


class StepRecorder:
    """`on_step` for `trainer.sample`: records rounds done (capped at each generation's own steps) on the first
    round, the last one, and at most every WRITE_EVERY_SECONDS in between."""

    def __init__(self, rt: Runtime, generations: Sequence[tuple[str, int]]) -> None:
        self.rt = rt
        self.generations = list(generations)  # (id, steps)
        self._last = 0.0

    def __call__(self, rounds: int, total: int) -> None:
        now = time.monotonic()
        if 1 < rounds < total and now - self._last < WRITE_EVERY_SECONDS:
            return
        self._last = now
        with self.rt.session_factory() as s:
            ours = [jobs.record_generation_step(s, gen_id, min(rounds, steps), self.rt.worker_host)
                    for gen_id, steps in self.generations]
            s.commit()
        if not any(ours):  # e.g. every row cancelled (storage/cancels.py): the rest of the loop is wasted work
            raise BatchGone(f"none of {len(ours)} generations is still ours at round {rounds}/{total}")


class PhaseStopped(Exception):
    """The job was cancelled, or is no longer this worker's, while a phase before training ran: stop it."""


def phase_value(p: PhaseProgress) -> dict[str, object]:
    """A phase as the job's `phase` column and its `phase` event hold it (JobPhase in storage/resources.py)."""
    return {"name": str(p.phase), "done": p.done, "total": p.total, "eta_seconds": p.eta_seconds}


class PhaseRecorder:
    """`on_phase` for the engine (trainer/feedback.py): writes the phase to the job's row (with a heartbeat) and
    adds a `phase` event on every report (the engine reports per batch of images, seconds apart). With `stops`,
    raises `PhaseStopped` once the job is cancelled or no longer this worker's, so minutes of rendering stop with
    it (without: the training loop's own cancel poll, or the finish, decides)."""

    def __init__(self, rt: Runtime, job_id: str, worker_host: str | None, *, stops: bool = True) -> None:
        self.rt, self.job_id, self.worker_host, self.stops = rt, job_id, worker_host, stops

    def __call__(self, p: PhaseProgress) -> None:
        value = phase_value(p)
        with self.rt.session_factory() as s:
            result = s.execute(update(TrainingJob).where(
                TrainingJob.id == self.job_id, TrainingJob.worker_host == self.worker_host,
                TrainingJob.state.in_(JOB_ACTIVE)).values(phase=value, heartbeat_at=utcnow())
                .execution_options(synchronize_session=False))
            assert isinstance(result, CursorResult)
            mine = result.rowcount == 1
            row = s.execute(select(TrainingJob.state, TrainingJob.cancel_requested_at)
                            .where(TrainingJob.id == self.job_id)).one_or_none()
            if mine:
                jobs.add_event(s, self.job_id, EventKind.PHASE, {"phase": value["name"], **{
                    k: v for k, v in value.items() if k != "name"}})
            s.commit()
        if not self.stops:
            return
        if not mine or row is None or row.cancel_requested_at is not None or row.state == JobState.CANCELLING:
            raise PhaseStopped(f"job {self.job_id} stopped during {p.phase} ({p.done}/{p.total})")
