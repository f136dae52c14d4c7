"""Shared pytest fixtures, one section per owner. Keep sections small; prefix names by what they provide."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# The model hub is outside the project and unreachable here and on CI: fail fast instead of retrying downloads.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# ============================================================================================================
# storage: databases (pg_*, sqlite_*) and an S3 server (s3_*)
# ============================================================================================================

PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def _pg_admin_engine():  # type: ignore[no-untyped-def]
    from sqlalchemy import create_engine

    return create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", pool_pre_ping=True)


@pytest.fixture
def pg_empty_url() -> Iterator[str]:
    """A brand-new empty PostgreSQL database for this test, dropped afterwards."""
    from sqlalchemy import text

    name = f"styledrop_test_{uuid.uuid4().hex[:12]}"
    admin = _pg_admin_engine()
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
# engine: the tiny aMUSEd preset, saved once and loaded through the real loading path (engine_*)
# ============================================================================================================


@pytest.fixture(scope="session")
def engine_tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny preset written with save_pretrained, once per test session."""
    from trainer.model import ensure_tiny

    return ensure_tiny(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def engine_tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny CLIP written with save_pretrained, once per test session (load it with `load_clip(str(dir))`)."""
    from trainer.clip import ensure_tiny_clip

    return ensure_tiny_clip(tmp_path_factory.mktemp("models") / "tiny-clip")


@pytest.fixture
def engine_parts(engine_tiny_dir: Path):  # type: ignore[no-untyped-def]
    """A fresh tiny model per test (0.2 s), loaded by `load_base` exactly like amused/amused-256."""
    from trainer.model import load_base

    return load_base(str(engine_tiny_dir))


@pytest.fixture(scope="session")
def engine_style_image():  # type: ignore[no-untyped-def]
    """A synthetic 'style': coloured stripes and a grid, whose VQ tokens differ clearly from random images."""
    import numpy as np
    from PIL import Image

    a = np.zeros((256, 256, 3), dtype=np.uint8)
    a[:, ::32] = [255, 0, 0]
    a[::2] = [0, 0, 255]
    for i in range(0, 256, 16):
        a[i : i + 8, :, 1] = 200
    return Image.fromarray(a)


# ============================================================================================================
# --- api fixtures --- the FastAPI app over SQLite and PostgreSQL with Redis as the broker (api_*)
# ============================================================================================================

REDIS_HOST_URL = "redis://127.0.0.1:6379"
# Databases 1..11 are for test runs (12 and 13 belong to bench/); each run claims one with a lock key in db 0, so
# two runs on one host (CI and a developer, or parallel checkouts) never flush each other's queues.
_TEST_REDIS_DBS = range(1, 12)


def _claim_redis_db() -> int:
    import redis

    override = os.environ.get("STYLEDROP_TEST_REDIS_DB")
    if override:
        return int(override)
    lock = redis.Redis.from_url(f"{REDIS_HOST_URL}/0")
    try:
        for db in _TEST_REDIS_DBS:
            # Expires on its own: a run killed without clean-up frees its database within two hours.
            if lock.set(f"styledrop:test-run-db:{db}", os.getpid(), nx=True, ex=7200):
                return db
    except Exception as exc:  # pragma: no cover - environment problem, not a test result
        raise RuntimeError(f"Redis at {REDIS_HOST_URL} is not usable (run ./scripts/services): {exc}") from exc
    finally:
        lock.close()
    raise RuntimeError(f"every test Redis database {list(_TEST_REDIS_DBS)} is claimed by another run")


def _release_redis_db(db: int) -> None:
    import redis

    lock = redis.Redis.from_url(f"{REDIS_HOST_URL}/0")
    if lock.get(f"styledrop:test-run-db:{db}") == str(os.getpid()).encode():
        lock.delete(f"styledrop:test-run-db:{db}")
    lock.close()


def _redis_url_for_run() -> str:
    db = _claim_redis_db()
    import atexit

    atexit.register(_release_redis_db, db)
    return f"{REDIS_HOST_URL}/{db}"


API_REDIS_URL = _redis_url_for_run()


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
def api_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database of each kind; the app migrates it at start-up."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'api.db'}"
    return str(request.getfixturevalue("pg_empty_url"))


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
    """A TestClient over the app (start-up migration included); `client.app.state` has engine and settings."""
    from fastapi.testclient import TestClient

    from api import queue
    from api.main import create_app

    queue.reset()
    app = create_app(api_settings)
    with TestClient(app) as client:
        yield client
    queue.reset()


@pytest.fixture
def api_keys(api_client) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Bearer headers for an admin, "alice" and "bob"."""
    from storage.users import create_api_key, create_user

    headers: dict[str, str] = {}
    with api_client.app.state.sessionmaker() as session:
        for name, admin in (("admin", True), ("alice", False), ("bob", False)):
            user = create_user(session, name, is_admin=admin)
            _, key = create_api_key(session, user.id)
            headers[name] = key
        session.commit()
    return headers


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


def worker_style_png(color: tuple[int, int, int] = (200, 40, 40), size: int = 256) -> bytes:
    """A small striped PNG to train on (Pillow)."""
    import io

    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), color)
    draw = ImageDraw.Draw(image)
    for x in range(0, size, 32):
        draw.rectangle([x, 0, x + 12, size], fill=(color[2], color[0], color[1]))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def worker_free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ============================================================================================================
# --- pages fixtures ---: the app on embedded defaults for page tests (pages_*), and the browser stack (browser_*)
# ============================================================================================================


@pytest.fixture
def pages_client(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A TestClient over the app on a SQLite file and the embedded broker (no Redis, no PostgreSQL)."""
    from fastapi.testclient import TestClient

    from api import queue
    from api.main import create_app
    from storage.settings import Settings

    queue.reset()
    settings = Settings(data_dir=tmp_path / "data", secret_key="pages-secret", rate_limit_per_minute=1000,
                        max_upload_bytes=256 * 1024)
    with TestClient(create_app(settings), base_url="http://testserver") as client:
        yield client
    queue.reset()


@pytest.fixture
def pages_keys(pages_client) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Plaintext API keys for an admin and "alice"."""
    from storage.users import create_api_key, create_user

    keys: dict[str, str] = {}
    with pages_client.app.state.sessionmaker() as session:
        for name, admin in (("admin", True), ("alice", False)):
            user = create_user(session, name, is_admin=admin)
            _, keys[name] = create_api_key(session, user.id)
        session.commit()
    return keys


BROWSER_CHROMIUM = "/usr/bin/chromium"
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]
BROWSER_ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


class BrowserStack:
    """`python -m worker.cli up --model tiny` in a temp data dir, with users made by `worker.cli users create`."""

    def __init__(self, tmp: Path) -> None:
        import sys

        self.tmp = tmp
        self.port = worker_free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.python = sys.executable
        self.log = tmp / "up.log"
        repo = str(Path(__file__).resolve().parent.parent)
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith("STYLEDROP_") and k not in {"DATABASE_URL", "BROKER_URL"}}
        self.env.update({
            "PYTHONPATH": repo, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
            "STYLEDROP_DATA_DIR": str(tmp / "data"), "STYLEDROP_DEVICE": "cpu", "STYLEDROP_PROGRESS_EVERY": "2",
            "STYLEDROP_CHECKPOINT_EVERY": "50", "STYLEDROP_PREVIEW_STEPS": "2", "STYLEDROP_RECONCILE_EVERY": "2",
            "STYLEDROP_RATE_LIMIT_PER_MINUTE": "10000",
        })
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        import httpx

        self.proc = subprocess.Popen(
            [self.python, "-m", "worker.cli", "up", "--model", "tiny", "--port", str(self.port)], cwd=self.tmp,
            env=self.env, stdout=self.log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"`worker.cli up` exited early:\n{self.logs()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        pytest.fail(f"the service did not come up:\n{self.logs()}")

    def create_user(self, name: str, *, admin: bool = False) -> str:
        flags = ["--admin"] if admin else []
        out = subprocess.run([self.python, "-m", "worker.cli", "users", "create", name, *flags],
                             cwd=self.tmp, env=self.env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip().splitlines()[-1]

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-6000:] if self.log.exists() else ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


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
