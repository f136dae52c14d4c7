"""Shared pytest fixtures, one section per owner. Keep sections small; prefix names by what they provide."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

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
