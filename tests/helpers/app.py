"""The app under test: one factory for every in-process client (API, pages, hostile input, fuzzing)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fastapi.testclient import TestClient

from storage.settings import Settings


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@contextmanager
def app_client(settings: Settings, *, migrate: bool = True, **client_args: Any) -> Iterator[TestClient]:
    """A TestClient over `create_app(settings)` (start-up and shut-down included), on a database migrated to
    head first as `styledrop migrate` leaves it, with the API's cached Celery producers reset around it (tests
    switch brokers). `client.app.state` holds the engine, the session maker, the settings and the blob store."""
    from api.main import create_app
    from api.services import queue
    from storage.db import upgrade_to_head

    if migrate:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        upgrade_to_head(settings.resolved_database_url)
    queue.reset()
    try:
        with TestClient(create_app(settings), **client_args) as client:
            yield client
    finally:
        queue.reset()


def add_users(client: TestClient, *names: str, admin: tuple[str, ...] = ("admin",)) -> dict[str, str]:
    """Create users (those in `admin` as admins) through storage; returns name → plaintext API key."""
    from storage.users import create_api_key, create_user

    keys: dict[str, str] = {}
    with client.app.state.sessionmaker() as session:
        for name in names:
            user = create_user(session, name, is_admin=name in admin)
            _, keys[name] = create_api_key(session, user.id)
        session.commit()
    return keys
