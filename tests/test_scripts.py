"""The quick-start scripts: set-up installs once, and `scripts/run` says first where the service is."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STYLEDROP_")}
    return subprocess.run(list(argv), cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_setup_installs_nothing_when_pyproject_is_unchanged() -> None:
    first = _run("./scripts/setup", "--test")  # ./scripts/test ran it already; this one must be a no-op
    assert first.returncode == 0, first.stderr
    assert "installing" not in first.stderr and first.stdout == ""
    stamps = list((REPO / ".venv").glob(".installed-test-*"))
    assert len(stamps) == 1


def test_run_says_where_the_service_is_which_model_where_data_lives_and_how_to_add_a_user() -> None:
    out = _run("./scripts/run", "--port", "8765", "--help")  # --help: `styledrop up` prints usage and exits
    assert out.returncode == 0, out.stderr
    banner = out.stderr
    assert "http://127.0.0.1:8765" in banner and "--port" in banner
    assert "tiny (random demo weights" in banner
    assert str(REPO / ".styledrop") in banner
    assert "styledrop users create" in banner
    assert "installing" not in banner  # the test install covers running: no pip on start
    assert "usage:" in out.stdout
