"""The `styledrop` service commands' expected failures as one line each (`styledrop <command>: error: ...`, exit
status 1), never a traceback: no database where the settings point, a database without the schema, a database or
broker that cannot be reached, a bad setting, a file system error. Anything else is a bug and keeps its traceback.

Nothing here imports SQLAlchemy, pydantic or Celery: an exception of theirs can only exist once they are imported,
so `expected_failure` looks them up in `sys.modules`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from storage.settings import Settings

MIGRATE_HINT = ("set STYLEDROP_DATA_DIR (default ./.styledrop) or DATABASE_URL to the service's database, or run "
                "`styledrop migrate` to create (or upgrade) one there")


class CommandError(Exception):
    """A failure the command itself names: printed as one line, exit status 1."""


def _shown(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparsable URL is shown as its scheme only (it may hold a password)
        return url.split(":", 1)[0] + ":…"


def existing_database(settings: Settings) -> str:
    """The settings' database URL, when it can hold data: an embedded SQLite database must exist already (reading
    one would otherwise create an empty file wherever the command happens to run)."""
    from storage.db import is_sqlite

    url = settings.resolved_database_url
    if is_sqlite(url):
        from sqlalchemy.engine import make_url

        path = make_url(url).database
        if path and path != ":memory:" and not Path(path).is_file():
            raise CommandError(f"no database at '{path}': {MIGRATE_HINT}")
    return url


def _database_message(exc: Exception, url: str | None) -> str:
    orig = getattr(exc, "orig", None)
    detail = str(orig if orig is not None else exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    where = f"the database at {_shown(url)}" if url else "the database"
    lowered = detail.lower()
    if "no such table" in lowered or ("relation" in lowered and "does not exist" in lowered) or \
            "no such column" in lowered or ("column" in lowered and "does not exist" in lowered):
        return f"{where} has no (or an older) Styledrop schema ({detail}): {MIGRATE_HINT}"
    return f"cannot use {where}: {detail}"


def _env_name(loc: tuple[object, ...]) -> str:
    """The environment variable of a settings field (storage/settings.py: `STYLEDROP_<FIELD>`, or an alias)."""
    name = str(loc[0]) if loc else "?"
    return name if name.isupper() else f"STYLEDROP_{name.upper()}"


def expected_failure(exc: BaseException, database_url: str | None = None) -> str | None:
    """One line for an expected failure, or None for anything else (a bug: let it raise)."""
    if isinstance(exc, CommandError):
        return str(exc)
    sa = sys.modules.get("sqlalchemy.exc")
    if sa is not None and isinstance(exc, sa.SQLAlchemyError):
        if isinstance(exc, sa.ArgumentError | sa.NoSuchModuleError):  # an unparsable URL, an unknown dialect
            return f"bad database URL (DATABASE_URL / STYLEDROP_DATABASE_URL): {exc}"
        return _database_message(exc, database_url)
    pydantic = sys.modules.get("pydantic")
    if pydantic is not None and isinstance(exc, pydantic.ValidationError):
        return "bad setting: " + "; ".join(f"{_env_name(e['loc'])}: {e['msg']} (got {e.get('input')!r})"
                                           for e in exc.errors())
    kombu = sys.modules.get("kombu.exceptions")
    if kombu is not None and isinstance(exc, kombu.OperationalError):
        return f"cannot reach the broker (BROKER_URL): {exc}"
    alembic = sys.modules.get("alembic.util.exc")
    if alembic is not None and isinstance(exc, alembic.CommandError):
        return f"cannot migrate: {exc}"
    if isinstance(exc, OSError):
        return str(exc)
    return None
