"""The `styledrop` command line, in-process: migrate, users create/list, the parser, and the expected failures
(no database, no schema, an unreachable database, a bad setting) as one line each."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from storage.settings import get_settings
from testkit.stack import free_port
from worker.cli import commands as cli


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    for var in ("DATABASE_URL", "BROKER_URL", "STYLEDROP_DATABASE_URL", "STYLEDROP_BROKER_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("STYLEDROP_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    yield tmp_path / "data"
    get_settings.cache_clear()


def test_migrate_and_users(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["migrate"]) == 0
    assert (data_dir / "styledrop.db").is_file()
    assert cli.main(["users", "create", "carol", "--admin"]) == 0
    key = capsys.readouterr().out.strip()
    assert key.startswith("sd_") and "\n" not in key
    assert cli.main(["users", "create", "carol"]) == 1  # names are unique
    capsys.readouterr()
    assert cli.main(["users", "list"]) == 0
    (line,) = capsys.readouterr().out.strip().splitlines()
    assert line.split("\t")[1:3] == ["carol", "admin"]


def test_parser_knows_every_command() -> None:
    parser = cli.build_parser()
    assert parser.parse_args(["up", "--model", "tiny", "--port", "9"]).port == 9
    assert parser.parse_args(["worker", "--queue", "generate"]).queue == "generate"
    assert parser.parse_args(["reconcile", "--once"]).once
    with pytest.raises(SystemExit):
        parser.parse_args(["worker", "--queue", "bogus"])


def test_users_keys_revoke_rotate_disable(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The admin operations of the API, from the CLI (storage.accounts): a leaked key is revoked without SQL."""
    from storage.db import make_engine, make_sessionmaker
    from storage.users import authenticate_key

    assert cli.main(["migrate"]) == 0
    assert cli.main(["users", "create", "dora"]) == 0
    first = capsys.readouterr().out.strip()
    assert cli.main(["users", "add-key", "dora"]) == 0
    second = capsys.readouterr().out.strip()
    assert cli.main(["users", "keys", "dora"]) == 0
    lines = [line.split("\t") for line in capsys.readouterr().out.strip().splitlines()]
    assert [(row[1], row[2], row[5]) for row in lines] == [("dora", f"sd_{first[3:11]}…", "-"),
                                                           ("dora", f"sd_{second[3:11]}…", "-")]
    assert first not in str(lines) and second not in str(lines)  # never the secret
    first_id, second_id = lines[0][0], lines[1][0]

    assert cli.main(["users", "revoke-key", first_id]) == 0
    assert cli.main(["users", "rotate-key", second_id]) == 0
    third = capsys.readouterr().out.strip()
    assert third.startswith("sd_") and third not in (first, second)
    assert cli.main(["users", "rotate-key", second_id]) == 1  # already revoked
    assert "already revoked" in capsys.readouterr().err

    engine = make_engine(f"sqlite:///{data_dir / 'styledrop.db'}")
    try:
        with make_sessionmaker(engine)() as session:
            assert authenticate_key(session, first) is None and authenticate_key(session, second) is None
            assert authenticate_key(session, third) is not None
        assert cli.main(["users", "disable", "dora"]) == 0
        with make_sessionmaker(engine)() as session:
            assert authenticate_key(session, third) is None
        assert cli.main(["users", "list"]) == 0
        assert capsys.readouterr().out.split("\t")[2] == "disabled"
        assert cli.main(["users", "enable", "dora"]) == 0
        with make_sessionmaker(engine)() as session:
            assert authenticate_key(session, third) is not None
    finally:
        engine.dispose()
    for args in (["disable", "nobody"], ["revoke-key", "nope"], ["keys", "nobody"]):
        assert cli.main(["users", *args]) == 1
        assert args[1] in capsys.readouterr().err  # names the bad value


@pytest.mark.parametrize("name", ["a b", "x" * 65, "ädmin", "admin\u200b", "a/b", ""])
def test_users_create_refuses_names_the_api_refuses(data_dir: Path, name: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from api.schemas import UserCreate

    with pytest.raises(ValueError):
        UserCreate(name=name)
    assert cli.main(["migrate"]) == 0
    assert cli.main(["users", "create", name]) == 1
    assert f"user name {name!r} is not allowed" in capsys.readouterr().err
    assert cli.main(["users", "list"]) == 0
    assert capsys.readouterr().out == ""


def test_users_outside_the_data_dir_name_the_missing_database_and_create_nothing(
        data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Run where no service keeps its data: one line naming the database it looked for and what to set or run,
    exit status 1, no traceback, and no empty database file left behind."""
    assert cli.main(["users", "list"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"styledrop users list: error: no database at '{data_dir / 'styledrop.db'}': ")
    assert "STYLEDROP_DATA_DIR" in err and "styledrop migrate" in err and len(err.splitlines()) == 1
    assert not data_dir.exists()

    data_dir.mkdir()
    (data_dir / "styledrop.db").touch()  # a file, but no schema
    assert cli.main(["users", "create", "erin"]) == 1
    err = capsys.readouterr().err
    assert "has no (or an older) Styledrop schema (no such table: users)" in err and "styledrop migrate" in err
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize("env,argv,message", [
    ({"DATABASE_URL": "postgresql+psycopg://me:s3cret@127.0.0.1:{port}/nothing"}, ["users", "list"],
     "styledrop users list: error: cannot use the database at postgresql+psycopg://me:***@127.0.0.1:{port}/nothing: "),
    ({"DATABASE_URL": "nosuchdb://x"}, ["migrate"], "styledrop migrate: error: bad database URL"),
    ({"STYLEDROP_PORT": "eighty"}, ["users", "list"],
     "styledrop users list: error: bad setting: STYLEDROP_PORT: Input should be a valid integer"),
])
def test_service_commands_fail_in_one_line_without_a_traceback(
        data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        env: dict[str, str], argv: list[str], message: str) -> None:
    port = str(free_port())  # nothing listens there
    for name, value in env.items():
        monkeypatch.setenv(name, value.format(port=port))
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(message.format(port=port)) and len(err.splitlines()) == 1, err
    assert "s3cret" not in err and "Traceback" not in err
