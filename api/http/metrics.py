"""Prometheus metrics computed from the database (and the broker) at scrape time, so every API process reports
the same numbers and nothing is lost on restart."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import timedelta

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from storage import broker
from storage import jobs as jobstore
from storage.models import WORKER_ONLINE_WINDOW, Generation, TrainingJob, Worker, utcnow
from storage.settings import Settings
from storage.states import GenerationState, JobState

logger = logging.getLogger(__name__)

LATENCY_BUCKETS: tuple[float, ...] = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)
LATENCY_WINDOW = timedelta(hours=1)
# Each counter and the keys of the adapter cache's stats (worker.adapter_cache.AdapterCache.stats) it sums.
CACHE_STATS: dict[str, tuple[str, ...]] = {
    "hits": ("hits_gpu", "hits_cpu"), "misses": ("misses",), "evictions": ("evictions",), "loads": ("loads",),
}


class StyledropCollector(Collector):
    def __init__(self, factory: sessionmaker[Session], settings: Settings) -> None:
        self.factory = factory
        self.settings = settings

    def collect(self) -> Iterator[Metric]:
        with self.factory() as session:
            jobs = GaugeMetricFamily("styledrop_jobs", "Training jobs by state", labels=["state"])
            for state, count in jobstore.count_by_state(session, TrainingJob).items():
                jobs.add_metric([state], count)
            yield jobs
            gens = GaugeMetricFamily("styledrop_generations", "Generations by state", labels=["state"])
            for state, count in jobstore.count_by_state(session, Generation).items():
                gens.add_metric([state], count)
            yield gens
            yield self._latency(session)
            yield self._step_time(session)
            yield from self._cache(session)
        yield self._queues()

    def _latency(self, session: Session) -> Metric:
        rows = session.execute(
            select(Generation.queued_at, Generation.finished_at)
            .where(Generation.state == GenerationState.SUCCEEDED, Generation.finished_at >= utcnow() - LATENCY_WINDOW)
            .limit(100_000)
        ).all()
        seconds = [(finished - queued).total_seconds() for queued, finished in rows if finished and queued]
        buckets = [(str(b), sum(1 for s in seconds if s <= b)) for b in LATENCY_BUCKETS]
        buckets.append(("+Inf", len(seconds)))
        hist = HistogramMetricFamily(
            "styledrop_generation_latency_seconds",
            "Queue-to-done latency of generations that succeeded in the last hour",
        )
        hist.add_metric([], buckets=buckets, sum_value=sum(seconds))
        return hist

    def _step_time(self, session: Session) -> Metric:
        gauge = GaugeMetricFamily(
            "styledrop_train_step_seconds", "Seconds per training step of running jobs", labels=["job_id"]
        )
        for job_id, sps in session.execute(
            select(TrainingJob.id, TrainingJob.steps_per_second).where(TrainingJob.state == JobState.RUNNING)
        ):
            if sps:
                gauge.add_metric([job_id], 1.0 / sps)
        return gauge

    def _cache(self, session: Session) -> Iterator[Metric]:
        cutoff = utcnow() - WORKER_ONLINE_WINDOW
        totals = dict.fromkeys(CACHE_STATS, 0.0)
        online = 0
        for (stats,) in session.execute(select(Worker.stats).where(Worker.heartbeat_at >= cutoff)):
            online += 1
            for name, keys in CACHE_STATS.items():
                for key in keys:
                    value = (stats or {}).get(key)
                    if isinstance(value, int | float) and not isinstance(value, bool):
                        totals[name] += value
        for name, value in totals.items():
            counter = CounterMetricFamily(
                f"styledrop_adapter_cache_{name}", f"Adapter cache {name}, summed over online workers"
            )
            counter.add_metric([], value)
            yield counter
        yield GaugeMetricFamily("styledrop_workers_online", "Workers with a heartbeat in the last 60 s", online)

    def _queues(self) -> Metric:
        gauge = GaugeMetricFamily("styledrop_queue_depth", "Messages waiting in each broker queue", labels=["queue"])
        try:
            for name, depth in broker.queue_depths(self.settings).items():
                gauge.add_metric([name], depth)
        except Exception as exc:
            logger.warning("queue depth unavailable for /metrics: %s", exc)
        return gauge


def make_registry(factory: sessionmaker[Session], settings: Settings) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StyledropCollector(factory, settings))
    return registry
