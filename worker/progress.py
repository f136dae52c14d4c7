"""Generation progress: the sampler's per-round callback, written to the generations it is rendering."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from storage import jobs
from worker.runtime import Runtime

logger = logging.getLogger(__name__)

WRITE_EVERY_SECONDS = 1.0  # a database write per round would cost more than a tiny model's round


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
            for gen_id, steps in self.generations:
                jobs.record_generation_step(s, gen_id, min(rounds, steps), self.rt.worker_host)
            s.commit()
