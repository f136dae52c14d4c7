"""Shared pytest fixtures, one section per owner; prefix names by what they provide. Plain helper functions and
classes live in tests/helpers/ (import them from there, never from this file or from another test module)."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit.stack import BROWSER_ARGS, BROWSER_CHROMIUM, BrowserStack
from tests.helpers.app import add_users, app_client
from tests.helpers.db import API_REDIS_URL, PG_ADMIN_URL, pg_admin_engine

pytest_plugins = ["tests.helpers.engine_fixtures"]  # engine_tiny_dir, engine_parts, engine_style_image, ...

# The model hub is outside the project and unreachable here and on CI: fail fast instead of retrying downloads.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# ============================================================================================================
# storage: databases (pg_*, sqlite_*) and an S3 server (s3_*)
# ============================================================================================================

@pytest.fixture
def pg_empty_url() -> Iterator[str]:
    """A brand-new empty PostgreSQL database for this test, dropped afterwards."""
    from sqlalchemy import text

    name = f"styledrop_test_{uuid.uuid4().hex[:12]}"
    admin = pg_admin_engine()
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # pragma: no cover - environment problem, not a test result
        admin.dispose()
        pytest.fail(f"PostgreSQL at {PG_ADMIN_URL} is not usable (run ./scripts/services): {exc}")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def pg_url(pg_empty_url: str) -> str:
    """A fresh PostgreSQL database migrated to head."""
    from storage.db import upgrade_to_head

    upgrade_to_head(pg_empty_url)
    return pg_empty_url


@pytest.fixture
def sqlite_empty_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'styledrop.db'}"


@pytest.fixture
def sqlite_url(sqlite_empty_url: str) -> str:
    """A fresh SQLite file migrated to head."""
    from storage.db import upgrade_to_head

    upgrade_to_head(sqlite_empty_url)
    return sqlite_empty_url


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 and a free port, for the whole session."""
    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    """A new empty bucket on the moto server; credentials are moto's dummies."""
    import boto3

    name = f"styledrop-{uuid.uuid4().hex[:12]}"
    boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    ).create_bucket(Bucket=name)
    return name


# ============================================================================================================
# --- api fixtures --- the FastAPI app over SQLite and PostgreSQL with Redis as the broker (api_*)
# ============================================================================================================

@pytest.fixture
def api_redis() -> Iterator[object]:
    """A Redis client on this run's database, flushed before and after the test."""
    import redis

    client = redis.Redis.from_url(API_REDIS_URL)
    try:
        client.ping()
    except Exception as exc:  # pragma: no cover - environment problem
        pytest.fail(f"Redis at {API_REDIS_URL} is not usable (run ./scripts/services): {exc}")
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def api_db_url(request: pytest.FixtureRequest) -> str:
    """An empty database of each kind (`app_client` migrates it, as `styledrop migrate` does before the API)."""
    return str(request.getfixturevalue("sqlite_empty_url" if request.param == "sqlite" else "pg_empty_url"))


@pytest.fixture
def api_settings(tmp_path: Path, api_db_url: str, api_redis: object):  # type: ignore[no-untyped-def]
    from storage.settings import Settings

    return Settings(
        data_dir=tmp_path / "data",
        database_url=api_db_url,
        broker_url=API_REDIS_URL,
        secret_key="test-secret",
        max_upload_bytes=256 * 1024,
        rate_limit_per_minute=1000,
    )


@pytest.fixture
def api_client(api_settings):  # type: ignore[no-untyped-def]
    """A TestClient over the app; `client.app.state` has engine and settings."""
    with app_client(api_settings) as client:
        yield client


@pytest.fixture
def api_keys(api_client) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Plaintext API keys of an admin, "alice" and "bob"."""
    return add_users(api_client, "admin", "alice", "bob")


# ============================================================================================================
# --- worker fixtures ---: a worker Runtime on a migrated SQLite file with the tiny model (worker_*)
# ============================================================================================================


@pytest.fixture(scope="session")
def worker_tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from trainer.model import ensure_tiny

    return ensure_tiny(tmp_path_factory.mktemp("worker-models") / "tiny")


@pytest.fixture
def worker_settings(tmp_path: Path, sqlite_url: str, worker_tiny_dir: Path):  # type: ignore[no-untyped-def]
    """Settings for in-process task runs: tiny model, 12-step jobs checkpointing every 4 steps."""
    from storage.settings import Settings

    return Settings(
        data_dir=tmp_path / "data", database_url=sqlite_url, model=str(worker_tiny_dir), device="cpu",
        checkpoint_every=4, progress_every=2, adapter_gpu_slots=2, adapter_cpu_cache=4, generate_batch_size=8,
        preview_steps=2,
    )


@pytest.fixture
def worker_runtime(worker_settings):  # type: ignore[no-untyped-def]
    from storage.db import make_engine, make_sessionmaker
    from worker.runtime import Runtime

    engine = make_engine(worker_settings.resolved_database_url)
    try:
        yield Runtime(worker_settings, make_sessionmaker(engine), kind="generate")
    finally:
        engine.dispose()


# ============================================================================================================
# --- pages fixtures ---: the app on embedded defaults for page tests (pages_*), and the browser stack (browser_*)
# ============================================================================================================


@pytest.fixture
def pages_client(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A TestClient over the app on a SQLite file and the embedded broker (no Redis, no PostgreSQL)."""
    from storage.settings import Settings

    settings = Settings(data_dir=tmp_path / "data", secret_key="pages-secret", rate_limit_per_minute=1000,
                        max_upload_bytes=256 * 1024)
    with app_client(settings, base_url="http://testserver") as client:
        yield client


@pytest.fixture
def pages_keys(pages_client) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Plaintext API keys for an admin and "alice"."""
    return add_users(pages_client, "admin", "alice")


@pytest.fixture(scope="module")
def browser_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserStack]:
    """The real service (API + train and generate workers, tiny model, embedded SQLite and broker)."""
    stack = BrowserStack(tmp_path_factory.mktemp("browser-stack"))
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def browser_keys(browser_stack: BrowserStack) -> dict[str, str]:
    return {name: browser_stack.create_user(name, admin=name == "admin") for name in ("admin", "alice", "bob")}


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Debian's Chromium, headless, driven by Playwright. Fails (never skips) when it cannot be started."""
    if not Path(BROWSER_CHROMIUM).exists():
        pytest.fail(f"{BROWSER_CHROMIUM} is missing: run ./scripts/setup (apt-get install chromium); "
                    "never `playwright install`")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:  # pragma: no cover - environment problem
        pytest.fail("the playwright package is missing: pip install -e '.[test]'")
    with sync_playwright() as p:
        try:
            chromium = p.chromium.launch(executable_path=BROWSER_CHROMIUM, args=BROWSER_ARGS)
        except Exception as exc:  # pragma: no cover - environment problem
            pytest.fail(f"Chromium at {BROWSER_CHROMIUM} did not start: {exc}")
        try:
            yield chromium
        finally:
            chromium.close()
