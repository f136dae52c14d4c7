"""Generation progress: the sampler's per-round callback, written to the generations it is rendering."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from storage import jobs
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
