"""Migrations build the schema the ORM expects, on PostgreSQL and SQLite, and downgrade cleanly."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from storage import models  # noqa: F401 - registers the tables
from storage.db import Base, downgrade_to_base, make_engine, upgrade_to_head

TABLES = {"users", "api_keys", "sessions", "styles", "training_jobs", "job_events", "adapters", "generations",
          "workers", "webhook_deliveries"}


def _diff(url: str) -> list[object]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(ctx, Base.metadata))
    finally:
        engine.dispose()


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


@pytest.mark.integration
def test_postgres_upgrade_matches_models_and_downgrades(pg_empty_url: str) -> None:
    assert _tables(pg_empty_url) == set()
    upgrade_to_head(pg_empty_url)
    assert _tables(pg_empty_url) == TABLES
    assert _diff(pg_empty_url) == []
    upgrade_to_head(pg_empty_url)  # idempotent
    downgrade_to_base(pg_empty_url)
    assert _tables(pg_empty_url) == set()
    upgrade_to_head(pg_empty_url)
    assert _diff(pg_empty_url) == []


def test_sqlite_upgrade_matches_models_and_downgrades(sqlite_empty_url: str) -> None:
    upgrade_to_head(sqlite_empty_url)
    assert _tables(sqlite_empty_url) == TABLES
    assert _diff(sqlite_empty_url) == []
    downgrade_to_base(sqlite_empty_url)
    assert _tables(sqlite_empty_url) == set()


def test_sqlite_engine_uses_wal_and_busy_timeout(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        engine.dispose()


def test_an_installed_wheel_migrates_without_the_source_tree(tmp_path: Path) -> None:
    """The Alembic scripts ship inside the package: a non-editable install (here: the built wheel, unpacked as pip
    installs a pure-Python wheel) migrates from any directory with no checkout on the path."""
    repo = Path(__file__).resolve().parent.parent
    src = tmp_path / "src"
    shutil.copytree(repo, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "tests", "bench", "docs", "__pycache__", "*_cache", "*.egg-info", "build", "test-artifacts",
        ".styledrop", "data"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist"), str(src)], check=True, timeout=300, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("styledrop-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        zf.extractall(tmp_path / "site")
    assert {"storage/migrations/env.py", "storage/migrations/script.py.mako",
            "storage/migrations/versions/0001_initial.py"} <= names
    url = f"sqlite:///{tmp_path / 'installed.db'}"
    site = tmp_path / "site"
    code = (f"import storage.db as db; assert db.__file__.startswith({str(site)!r}), db.__file__; "
            f"db.upgrade_to_head({url!r})")
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(site)},
                   check=True, timeout=120)
    assert _tables(url) == TABLES


def test_upgrade_works_from_another_directory(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parent.parent
    url = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    env = {**os.environ, "PYTHONPATH": str(repo)}
    subprocess.run(
        [sys.executable, "-c", f"from storage.db import upgrade_to_head; upgrade_to_head({url!r})"],
        cwd=tmp_path,
        env=env,
        check=True,
        timeout=120,
    )
    assert _tables(url) == TABLES


def _versions_backfill(url: str) -> None:
    """A database at 0007 holding styles, adapters and a generation migrates to head (0008b adds columns in place,
    0009 numbers the existing adapters per style, oldest first) and back down to 0007 and up again: no step may
    rebuild a table that other rows reference."""
    from alembic import command
    from sqlalchemy import text

    from storage.db import alembic_config

    command.upgrade(alembic_config(url), "0007")
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO users (id, name, is_admin, disabled, created_at) "
                              "VALUES ('u', 'u', false, false, '2026-01-01 00:00:00+00')"))
            for sid in ("s1", "s2"):
                conn.execute(text("INSERT INTO styles (id, owner_id, image_key, image_sha256, image_bytes, width, "
                                  "height, descriptor, created_at) VALUES (:s, 'u', 'k', 'h', 1, 1, 1, 'd', "
                                  "'2026-01-01 00:00:00+00')"), {"s": sid})
            for aid, sid, day in (("a3", "s1", 3), ("a1", "s1", 1), ("b1", "s2", 2), ("a2", "s1", 2)):
                conn.execute(text("INSERT INTO training_jobs (id, style_id, owner_id, state, attempts, max_attempts, "
                                  "step, total_steps, params, queued_at, gpu_seconds) VALUES (:j, :s, 'u', "
                                  "'succeeded', 1, 3, 1, 1, '{}', '2026-01-01 00:00:00+00', 0)"),
                             {"j": f"j{aid}", "s": sid})
                conn.execute(text("INSERT INTO adapters (id, owner_id, style_id, job_id, blob_key, sha256, bytes, "
                                  "base_model, rank, alpha, targets, descriptor, train_prompt, steps, seed, "
                                  "engine_version, created_at) VALUES (:a, 'u', :s, :j, 'k', 'h', 1, 'tiny', 4, 4, "
                                  "'[]', 'd', 'p', 1, 0, 'e', :t)"),
                             {"a": aid, "s": sid, "j": f"j{aid}", "t": f"2026-01-0{day} 00:00:00+00"})
            # A generation referencing an adapter: what made a table-rebuilding migration fail on SQLite.
            conn.execute(text("INSERT INTO generations (id, owner_id, adapter_id, prompt, style_strength, "
                              "guidance_scale, steps, seed, num_images, state, attempts, queued_at, image_keys, step) "
                              "VALUES ('g', 'u', 'a1', 'p', 1, 1, 1, 0, 1, 'succeeded', 1, "
                              "'2026-01-01 00:00:00+00', '[]', 0)"))
        upgrade_to_head(url)
        with engine.connect() as conn:
            got = {a: v for a, v in conn.execute(text("SELECT id, version FROM adapters"))}
        assert got == {"a1": 1, "a2": 2, "a3": 3, "b1": 1}
        assert _diff(url) == []
        command.downgrade(alembic_config(url), "0008b")
        with engine.connect() as conn:
            assert "version" not in {c["name"] for c in inspect(conn).get_columns("adapters")}
        command.downgrade(alembic_config(url), "0007")
        with engine.connect() as conn:
            assert "kind" not in {c["name"] for c in inspect(conn).get_columns("styles")}
            assert conn.execute(text("SELECT adapter_id FROM generations")).scalar() == "a1"
        upgrade_to_head(url)
        assert _diff(url) == []
    finally:
        engine.dispose()


def test_sqlite_0009_numbers_existing_adapters_per_style(sqlite_empty_url: str) -> None:
    _versions_backfill(sqlite_empty_url)


@pytest.mark.integration
def test_postgres_0009_numbers_existing_adapters_per_style(pg_empty_url: str) -> None:
    _versions_backfill(pg_empty_url)


def _job_params_rewrite(url: str) -> None:
    """0010 gives every job's params the shape the API writes (storage/job_params.py), from what older rows hold."""
    import json

    from alembic import command
    from sqlalchemy import text

    from storage.db import alembic_config
    from storage.job_params import JobParams

    command.upgrade(alembic_config(url), "0009")
    legacy = {
        "bare": {}, "seed_only": {"seed": 5},
        "extra_key": {"steps": 3, "seed": 1, "descriptor": "old", "content": None, "learning_rate": 0.1},
        "round": {"seed": 2, "round": {"mode": "automatic", "adapter_id": "a", "version": 1}},
    }
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO users (id, name, is_admin, disabled, created_at) "
                              "VALUES ('u', 'u', false, false, '2026-01-01 00:00:00+00')"))
            conn.execute(text("INSERT INTO styles (id, owner_id, image_key, image_sha256, image_bytes, width, height, "
                              "descriptor, content, created_at) VALUES ('s', 'u', 'k', 'h', 1, 1, 1, 'ink', 'a cat', "
                              "'2026-01-01 00:00:00+00')"))
            for job_id, params in legacy.items():
                conn.execute(text("INSERT INTO training_jobs (id, style_id, owner_id, state, attempts, max_attempts, "
                                  "step, total_steps, params, queued_at, gpu_seconds) VALUES (:j, 's', 'u', "
                                  "'queued', 0, 3, 0, 7, :p, '2026-01-01 00:00:00+00', 0)"),
                             {"j": job_id, "p": json.dumps(params)})
        upgrade_to_head(url)
        with engine.connect() as conn:
            got = {j: json.loads(p) if isinstance(p, str) else p
                   for j, p in conn.execute(text("SELECT id, params FROM training_jobs"))}
    finally:
        engine.dispose()
    base = {"steps": 7, "descriptor": "ink", "content": "a cat"}
    assert got == {
        "bare": {**base, "seed": 0}, "seed_only": {**base, "seed": 5},
        "extra_key": {"steps": 3, "seed": 1, "descriptor": "old", "content": None},
        "round": {**base, "seed": 2, "round": {"mode": "automatic", "adapter_id": "a", "version": 1, "prompts": 10,
                                               "per_prompt": 4}},
    }
    for params in got.values():
        assert JobParams.model_validate(params).to_json() == params  # the worker reads every row as it is


def test_sqlite_0010_rewrites_legacy_job_params(sqlite_empty_url: str) -> None:
    _job_params_rewrite(sqlite_empty_url)


@pytest.mark.integration
def test_postgres_0010_rewrites_legacy_job_params(pg_empty_url: str) -> None:
    _job_params_rewrite(pg_empty_url)
