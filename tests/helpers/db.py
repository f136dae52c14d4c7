"""Databases for tests: this run's own Redis database, PostgreSQL admin access, and work rows made directly."""

from __future__ import annotations

import atexit
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine

REDIS_HOST_URL = "redis://127.0.0.1:6379"
PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
# Databases 1..11 are for test runs (12 and 13 belong to bench/); each run claims one with a lock key in db 0, so
# two runs on one host (CI and a developer, or parallel checkouts) never flush each other's queues.
_TEST_REDIS_DBS = range(1, 12)


def _me() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _holder_is_dead(holder: bytes) -> bool:
    """A lock taken by a process of this host that no longer exists (a run killed before its clean-up)."""
    host, _, pid = holder.decode(errors="replace").rpartition(":")
    if (host or socket.gethostname()) != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _claim_redis_db() -> int:
    import redis

    override = os.environ.get("STYLEDROP_TEST_REDIS_DB")
    if override:
        return int(override)
    lock = redis.Redis.from_url(f"{REDIS_HOST_URL}/0")
    try:
        for db in _TEST_REDIS_DBS:
            key = f"styledrop:test-run-db:{db}"
            # Expires on its own after two hours; a lock whose process died is taken over at once.
            if lock.set(key, _me(), nx=True, ex=7200):
                return db
            holder = lock.get(key)
            if holder and _holder_is_dead(holder) and lock.set(key, _me(), xx=True, get=True, ex=7200) == holder:
                return db
    except Exception as exc:  # pragma: no cover - environment problem, not a test result
        raise RuntimeError(f"Redis at {REDIS_HOST_URL} is not usable (run ./scripts/services): {exc}") from exc
    finally:
        lock.close()
    raise RuntimeError(f"every test Redis database {list(_TEST_REDIS_DBS)} is claimed by another run")


def _release_redis_db(db: int) -> None:
    import redis

    lock = redis.Redis.from_url(f"{REDIS_HOST_URL}/0")
    if lock.get(f"styledrop:test-run-db:{db}") == _me().encode():
        lock.delete(f"styledrop:test-run-db:{db}")
    lock.close()


def _redis_url_for_run() -> str:
    db = _claim_redis_db()
    atexit.register(_release_redis_db, db)
    return f"{REDIS_HOST_URL}/{db}"


# This run's Redis database, claimed once per process on first import.
API_REDIS_URL = _redis_url_for_run()


def pg_admin_engine() -> Engine:
    return create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", pool_pre_ping=True)


# --- work rows made directly in the database (no API, no broker) -------------------------------------------------


def make_job(rt: Any, *, steps: int = 12, seed: int = 3,
             color: tuple[int, int, int] = (200, 40, 40), owner: str | None = None, **kw: Any) -> str:
    """A style (its striped image in the blob store) and its training job, as the API writes them (the job's params
    a `JobParams`); returns the job id. `rt` is a worker `Runtime` (or anything with `session_factory` and
    `store`); `kw` sets job columns."""
    from storage.blobs import content_key, sha256_hex
    from storage.job_params import JobParams
    from storage.models import Style, TrainingJob, utcnow
    from storage.users import create_user
    from testkit.images import style_png

    data = style_png(color)
    sha = sha256_hex(data)
    key = content_key("styles", sha, "png")
    rt.store.put_bytes(key, data)
    with rt.session_factory() as s:
        owner_id = owner or create_user(s, f"u{utcnow().timestamp()}").id
        style = Style(owner_id=owner_id, image_key=key, image_sha256=sha, image_bytes=len(data), width=256,
                      height=256, descriptor="striped poster")
        s.add(style)
        s.flush()
        job = TrainingJob(style_id=style.id, owner_id=owner_id, total_steps=steps,
                          params=JobParams(steps=steps, seed=seed, descriptor=style.descriptor).to_json(),
                          max_attempts=3, **kw)
        s.add(job)
        s.commit()
        return job.id


def make_generation(rt: Any, owner: str, adapter_id: str | None, **kw: Any) -> str:
    """A queued generation (3 steps); returns its id. `kw` sets generation columns."""
    from storage.models import Generation

    with rt.session_factory() as s:
        gen = Generation(owner_id=owner, adapter_id=adapter_id, **{"prompt": "a house", "guidance_scale": 3.0,
                                                                    "steps": 3, "seed": 7, **kw})
        s.add(gen)
        s.commit()
        return gen.id


def get_row(rt: Any, model: Any, row_id: str) -> Any:
    """The row as committed now (a fresh session)."""
    with rt.session_factory() as s:
        return s.get(model, row_id)


@contextmanager
def count_queries(engine: Engine) -> Iterator[list[str]]:
    """The SQL statements `engine` runs inside the block (SQLAlchemy's `before_cursor_execute` hook), to prove
    that a listing costs the same number of queries whatever its page size."""
    from sqlalchemy import event

    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)
