"""The reconciler: the database is the record, so it repairs what the broker lost.

- `queued` jobs/generations whose message was never sent (enqueue failed after commit), or sent so long ago that
  it must be lost, are sent again (a duplicate message is harmless: the task finds the row taken and returns);
- `running` jobs/generations whose heartbeat is stale (worker killed) go back to `queued` and are re-sent; the
  train task then resumes from the last checkpoint. Between full passes (every reconcile_every) this sweep alone
  runs every heartbeat_every_seconds (`requeue_stale`), so the failover takes about heartbeat_stale_seconds;
- those already at `max_attempts` end `failed` instead of looping; a stale `cancelling` job ends `cancelled`;
- when the broker holds fewer messages in a queue than the database has rows waiting on it (a Redis restart
  without persistence, a flushed queue), every waiting row sent before the grace period is sent again at once,
  instead of after `visibility_timeout`.

Run it in a thread inside `styledrop up`, or as `styledrop reconcile [--once]`. A stand-alone `run_forever` also runs
the webhook delivery loop (worker/ops/webhook_pool.py) in a thread of its own; `styledrop up` runs that loop as a
supervised process instead (`styledrop webhooks`), so no receiver's answer is ever read inside the supervisor.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from storage import jobs
from storage.blobs import blob_store_from_settings
from storage.broker import ROUTES, queue_depths
from storage.dispatch import MODELS, Send, celery_send, dispatch
from storage.error_codes import FailureCode
from storage.models import Generation, TrainingJob, utcnow
from storage.reclaim import reclaim
from storage.settings import Settings
from storage.states import GENERATION_ACTIVE, JOB_ACTIVE, GenerationState, JobState, WorkKind
from worker.ops import webhook_pool  # webhook delivery beside a stand-alone reconciler, in its own thread

logger = logging.getLogger(__name__)

Depths = Callable[[], dict[str, int]]  # messages waiting per queue in the broker; raises when unreachable

GENERATION_RESEND_MIN_SECONDS = 300.0
TEMP_SWEEP_EVERY_SECONDS = 3600.0


@dataclass
class ReconcileReport:
    sent_jobs: list[str] = field(default_factory=list)
    sent_generations: list[str] = field(default_factory=list)
    requeued_jobs: list[str] = field(default_factory=list)
    requeued_generations: list[str] = field(default_factory=list)
    failed_jobs: list[str] = field(default_factory=list)
    failed_generations: list[str] = field(default_factory=list)
    cancelled_jobs: list[str] = field(default_factory=list)
    send_errors: int = 0

    @property
    def changed(self) -> bool:
        return any((self.sent_jobs, self.sent_generations, self.requeued_jobs, self.requeued_generations,
                    self.failed_jobs, self.failed_generations, self.cancelled_jobs, self.send_errors))


def _requeue(session: Session, settings: Settings, report: ReconcileReport, dead_jobs: Sequence[TrainingJob],
             dead_gens: Sequence[Generation], why: str) -> dict[WorkKind, list[str]]:
    """Jobs and generations whose worker is gone: back to queued (or final when out of attempts). Commits.
    Returns the requeued ids to send again."""
    now = utcnow()
    resend_jobs: list[str] = []
    for job in dead_jobs:
        if job.state == JobState.CANCELLING:
            if jobs.transition(session, job.id, expected=JobState.CANCELLING, new=JobState.CANCELLED,
                               finished_at=now):
                report.cancelled_jobs.append(job.id)
        elif job.attempts >= job.max_attempts:
            if jobs.transition(
                session, job.id, expected=JobState.RUNNING, new=JobState.FAILED, finished_at=now,
                error_code=FailureCode.TOO_MANY_ATTEMPTS,
                error_message=f"The worker running this job stopped responding {job.attempts} times "
                f"(the limit is {job.max_attempts}); giving up. Retry the job to start it again.",
            ):
                report.failed_jobs.append(job.id)
        elif jobs.transition(session, job.id, expected=JobState.RUNNING, new=JobState.QUEUED):
            logger.warning("job %s: %s on %s; requeued", job.id, why, job.worker_host)
            report.requeued_jobs.append(job.id)
            resend_jobs.append(job.id)
    resend_gens: list[str] = []
    for gen in dead_gens:
        if gen.attempts >= settings.max_attempts:
            if jobs.transition_generation(
                session, gen.id, expected=GenerationState.RUNNING, new=GenerationState.FAILED, finished_at=now,
                error_code=FailureCode.TOO_MANY_ATTEMPTS,
                error_message="The worker running this generation stopped responding too often; giving up.",
            ):
                report.failed_generations.append(gen.id)
        elif jobs.transition_generation(session, gen.id, expected=GenerationState.RUNNING,
                                        new=GenerationState.QUEUED):
            logger.warning("generation %s: %s on %s; requeued", gen.id, why, gen.worker_host)
            report.requeued_generations.append(gen.id)
            resend_gens.append(gen.id)
    session.commit()
    return {WorkKind.TRAIN: resend_jobs, WorkKind.GENERATE: resend_gens}


def _repair_stale(session: Session, settings: Settings, report: ReconcileReport) -> dict[WorkKind, list[str]]:
    """Requeue (or end) rows whose worker stopped beating; returns the requeued ids to send again."""
    stale = timedelta(seconds=settings.heartbeat_stale_seconds)
    return _requeue(session, settings, report, jobs.stale_rows(session, TrainingJob, stale),
                    jobs.stale_rows(session, Generation, stale), "heartbeat stale")


def _send_all(session: Session, report: ReconcileReport, send: Send, resend: dict[WorkKind, list[str]]) -> None:
    sent = {WorkKind.TRAIN: report.sent_jobs, WorkKind.GENERATE: report.sent_generations}
    for kind, ids in resend.items():
        for row_id in ids:
            if dispatch(session, kind, row_id, send):
                sent[kind].append(row_id)
            else:
                report.send_errors += 1


def requeue_dead_worker(
    session_factory: sessionmaker[Session], settings: Settings, worker_host: str, send: Send
) -> ReconcileReport:
    """The process `worker_host` (`<hostname>:<pid>`) is known dead (its supervisor saw it exit): requeue and
    re-send its running jobs and generations now, instead of after the heartbeat window."""
    report = ReconcileReport()
    with session_factory() as session:
        dead_jobs = session.scalars(select(TrainingJob).where(
            TrainingJob.worker_host == worker_host, TrainingJob.state.in_(JOB_ACTIVE))).all()
        dead_gens = session.scalars(select(Generation).where(
            Generation.worker_host == worker_host, Generation.state.in_(GENERATION_ACTIVE))).all()
        _send_all(session, report, send, _requeue(session, settings, report, dead_jobs, dead_gens, "worker exited"))
    if report.changed:
        logger.info("requeued the work of %s: %s", worker_host, report)
    return report


def requeue_stale(session_factory: sessionmaker[Session], settings: Settings, send: Send) -> ReconcileReport:
    """Only the stale-heartbeat part of a pass: requeue and re-send the rows of workers that stopped beating.
    Cheap (one indexed query per table when nothing is stale), so `run_forever` runs it every
    heartbeat_every_seconds between full passes: a dead worker's work is back in the queue about
    heartbeat_stale_seconds after its death, not a reconcile_every later. Safe beside other reconcilers: every
    requeue is a conditional UPDATE (one of them wins), and a duplicate wake-up finds its row taken."""
    report = ReconcileReport()
    with session_factory() as session:
        _send_all(session, report, send, _repair_stale(session, settings, report))
    if report.changed:
        logger.info("requeued stale work: %s", report)
    return report


def reconcile_once(
    session_factory: sessionmaker[Session],
    settings: Settings,
    send: Send,
    *,
    unsent_grace: timedelta | None = None,
    depths: Depths | None = None,
) -> ReconcileReport:
    """One pass. `unsent_grace`: how long a queued row may wait for its first send (default reconcile_every).
    `depths`: the broker's queue lengths, to notice lost messages (None: only the time-based re-send)."""
    report = ReconcileReport()
    grace = unsent_grace if unsent_grace is not None else timedelta(seconds=max(settings.reconcile_every, 1.0))
    # A message sent this long ago and still not taken is presumed lost.
    resend_after = {
        WorkKind.TRAIN: timedelta(seconds=settings.visibility_timeout),
        WorkKind.GENERATE: timedelta(seconds=max(GENERATION_RESEND_MIN_SECONDS, settings.heartbeat_stale_seconds)),
    }
    now = utcnow()
    with session_factory() as session:
        resend = _repair_stale(session, settings, report)
        waiting = {kind: list(jobs.unsent_rows(session, MODELS[kind], grace, limit=1000)) for kind in WorkKind}
        lost = _lost_queues(depths, waiting)
        for kind, rows in waiting.items():
            for row in rows:
                if row.id not in resend[kind] and (row.sent_at is None or row.sent_at < now - resend_after[kind]
                                                   or kind in lost):
                    resend[kind].append(row.id)
        _send_all(session, report, send, resend)
    if report.changed:
        logger.info("reconciled: %s", report)
    return report


def _lost_queues(depths: Depths | None, waiting: dict[WorkKind, list[Any]]) -> set[WorkKind]:
    """Kinds whose queue holds fewer messages in the broker than there are rows that were sent and still wait."""
    if depths is None:
        return set()
    try:
        in_broker = depths()
    except Exception as exc:
        logger.warning("could not read queue depths: %s", exc)
        return set()
    lost = set()
    for kind, rows in waiting.items():
        queue = ROUTES[kind].queue
        sent = sum(1 for row in rows if row.sent_at is not None)
        if sent and in_broker.get(queue, 0) < sent:
            logger.warning("queue %s holds %d messages but %d sent rows wait on it: re-sending them",
                           queue, in_broker.get(queue, 0), sent)
            lost.add(kind)
    return lost


def broker_depths(settings: Settings) -> Depths:
    return lambda: queue_depths(settings)


def celery_sender() -> Send:
    """Sends through the worker's Celery app (by task name; `task_routes` picks the queue)."""
    # Imported here: importing worker.celery_app builds the Celery app from the settings of that moment and
    # connects the worker's signal handlers, which only a process that sends or runs tasks should do.
    from worker.celery_app import app

    return celery_send(app)


def run_forever(
    session_factory: sessionmaker[Session], settings: Settings, stop: threading.Event,
    send: Send | None = None, *, deliver_webhooks: bool = True,
) -> None:
    """Reconcile every `settings.reconcile_every` seconds until `stop` is set; errors are logged, not raised."""
    send = send or celery_sender()
    store = blob_store_from_settings(settings)
    next_sweep = next_reclaim = 0.0
    hooks = webhook_pool.start_thread(session_factory, settings, stop) if deliver_webhooks else None
    while not stop.is_set():
        try:
            reconcile_once(session_factory, settings, send, depths=broker_depths(settings))
        except Exception:
            logger.exception("reconcile pass failed")
        if time.monotonic() >= next_sweep:  # temp files of blob writes killed before their rename; hourly
            try:
                store.sweep_temp_files()
            except OSError:
                logger.exception("temp-file sweep failed")
            next_sweep = time.monotonic() + TEMP_SWEEP_EVERY_SECONDS
        if time.monotonic() >= next_reclaim:  # unreferenced blobs: refused uploads, deleted rows, checkpoints
            try:
                reclaim(session_factory, store, grace_seconds=settings.blob_grace_seconds)
            except Exception:
                logger.exception("reclaim pass failed")
            next_reclaim = time.monotonic() + settings.reclaim_every
        _sweep_until(session_factory, settings, send, stop, time.monotonic() + settings.reconcile_every)
    if hooks is not None:
        hooks.join(timeout=settings.webhook_timeout_seconds + 5)


def _sweep_until(session_factory: sessionmaker[Session], settings: Settings, send: Send, stop: threading.Event,
                 deadline: float) -> None:
    """Until `deadline` (the next full pass) or `stop`: `requeue_stale` every heartbeat_every_seconds."""
    every = max(0.05, min(settings.heartbeat_every_seconds, settings.heartbeat_stale_seconds / 3))
    while not stop.wait(max(0.0, min(every, deadline - time.monotonic()))) and time.monotonic() < deadline:
        try:
            requeue_stale(session_factory, settings, send)
        except Exception:
            logger.exception("stale sweep failed")


def start_thread(
    session_factory: sessionmaker[Session], settings: Settings, *, send: Send | None = None,
    stop: threading.Event | None = None, deliver_webhooks: bool = True,
) -> tuple[threading.Event, threading.Thread]:
    """`run_forever` in a daemon thread (inside `styledrop up`); set the returned event to stop it."""
    stop = stop or threading.Event()
    thread = threading.Thread(target=run_forever, args=(session_factory, settings, stop, send), name="reconciler",
                              kwargs={"deliver_webhooks": deliver_webhooks}, daemon=True)
    thread.start()
    return stop, thread
