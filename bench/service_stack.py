"""Shared set-up of the service benchmarks (enqueue.py, load.py): a throwaway PostgreSQL database, a flushed Redis
database and a uvicorn API process on 127.0.0.1, all removed afterwards; and the percentile helper."""

from __future__ import annotations

import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from storage.db import upgrade_to_head  # noqa: E402
from testkit.stack import (  # noqa: E402
    Stack,
    free_port,
    service_env,
    wait_http,
)

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def pct(values: list[float], p: float) -> float:
    """The p-th percentile of `values` (seconds), in milliseconds."""
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))] * 1000


@contextmanager
def api_stack(name: str, redis_url: str, *, api_args: Sequence[str] = (), **env: str) -> Iterator[
        tuple[Stack, str, str]]:
    """Yield (stack, API base URL, database URL); `env` adds STYLEDROP_* settings for every process."""
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    db = f"styledrop_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{db}"'))
    db_url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{db}"
    upgrade_to_head(db_url)  # as `styledrop migrate` does before the API starts
    tmp = Path(tempfile.mkdtemp(prefix=f"styledrop-{name}-"))
    stack = Stack(tmp, service_env(tmp / "data", DATABASE_URL=db_url, BROKER_URL=redis_url, **env))
    port = free_port()
    stack.spawn("api", "-m", "uvicorn", "api.main:create_app", "--factory", "--port", str(port), *api_args)
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=60) as probe:
            wait_http(probe, stack)
        yield stack, base, db_url
    finally:
        stack.stop()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
        admin.dispose()
        redis.Redis.from_url(redis_url).flushdb()
        shutil.rmtree(tmp, ignore_errors=True)
