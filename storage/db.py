"""Engine, sessions, the declarative base, and migrations run from code.

The schema is owned by Alembic; its scripts live in `alembic/` (linked as `storage/migrations/`) and ship inside
the package, so an installed (non-editable) copy migrates too. The service never calls `create_all` and the API
never runs DDL: `styledrop migrate` and `styledrop up` call `upgrade_to_head`; the API checks `schema_problem` at
start-up and in `/readyz`.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, MetaData, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

logger = logging.getLogger(__name__)

NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

SQLITE_BUSY_TIMEOUT_MS = 30_000

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for `url`. SQLite files are shared by API and worker processes: WAL, a 30 s busy timeout,
    foreign keys on. PostgreSQL connections are pinged before use (database restarts, idle timeouts)."""
    if is_sqlite(url):
        connect_args = {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
        connect_args.update(kwargs.pop("connect_args", {}))
        engine = create_engine(url, connect_args=connect_args, **kwargs)
        event.listen(engine, "connect", _sqlite_on_connect)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded attributes after commit (rows are handed to templates and tasks)."""
    return sessionmaker(bind=engine, expire_on_commit=False)


def alembic_config(url: str) -> Any:
    """An Alembic `Config` for the packaged migrations, usable from any working directory (no alembic.ini: that
    file at the repository root is only for developers running `alembic revision`)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser interpolation: a literal % (URL-encoded password) must be doubled.
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["configure_logger"] = False  # leave the host process's logging alone
    return cfg


def upgrade_to_head(url: str) -> None:
    """Run `alembic upgrade head` against `url`."""
    from alembic import command

    logger.info("migrating %s to head", make_url(url).render_as_string(hide_password=True))
    command.upgrade(alembic_config(url), "head")


@lru_cache(maxsize=1)
def head_revision() -> str | None:
    """The newest migration's revision id (read from the scripts once per process)."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("")).get_current_head()


def schema_problem(engine: Engine) -> str | None:
    """None when the database is at the newest migration, else what is wrong and what to run. Raises when the
    database cannot be reached."""
    from alembic.migration import MigrationContext

    with engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
    head = head_revision()
    if current == head:
        return None
    return (f"the database schema is at revision {current or 'none (an empty database)'} but this code needs "
            f"{head}; run `styledrop migrate`")


def downgrade_to_base(url: str) -> None:
    from alembic import command

    command.downgrade(alembic_config(url), "base")
