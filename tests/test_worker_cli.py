"""The `styledrop` command line, in-process: migrate, users create/list, and the parser."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from storage.settings import get_settings
from worker import cli


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
