"""The README's curl walk-through, run as written against `styledrop up --model tiny` with its default settings."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit.images import style_png
from testkit.stack import BrowserStack

README = Path(__file__).resolve().parent.parent / "README.md"

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def walkthrough_block() -> str:
    """The first bash block of the walk-through section that uploads a style."""
    section = README.read_text().split("## Walk-through with curl", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    return next(b for b in blocks if "/v1/styles" in b and "field()" in b)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[BrowserStack]:
    s = BrowserStack(tmp_path)
    # A user's `up`: none of the tests' shortcuts (short previews, frequent progress and checkpoints).
    s.env = {k: v for k, v in s.env.items() if not k.startswith("STYLEDROP_") or k == "STYLEDROP_DATA_DIR"}
    s.start()
    yield s
    s.stop()


def test_the_readme_walkthrough_runs_as_written(stack: BrowserStack, tmp_path: Path) -> None:
    block = walkthrough_block()
    assert "API=http://127.0.0.1:8000" in block
    block = block.replace("127.0.0.1:8000", f"127.0.0.1:{stack.port}")  # the only change: this test's free port
    work = tmp_path / "user"
    work.mkdir()
    (work / "watercolor.png").write_bytes(style_png((40, 90, 200)))
    key = stack.create_user("reader")
    run = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=work, env={**stack.env, "KEY": key},
                         capture_output=True, text=True, timeout=420)
    assert run.returncode == 0, f"{run.stdout}\n{run.stderr}\n{stack.logs()}"
    assert '"state":"succeeded"' in run.stdout, run.stdout
    assert (work / "style.safetensors").read_bytes()[8:9] == b"{"  # a safetensors header, not an error body
    assert (work / "cat0.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_readme_style_and_subject_block_runs_as_written(stack: BrowserStack, tmp_path: Path) -> None:
    section = README.read_text().split("### Several images, subjects, and style + subject", 1)[1].split("\n## ", 1)[0]
    mixing = re.findall(r"```bash\n(.*?)```", section, flags=re.S)[0]
    first = walkthrough_block()
    setup = "\n".join(line for line in first.splitlines() if line.startswith(("H=", "field()")))
    block = f"{setup}\n{mixing}".replace("127.0.0.1:8000", f"127.0.0.1:{stack.port}")
    work = tmp_path / "user"
    work.mkdir()
    for name, color in (("watercolor", (40, 90, 200)), ("watercolor2", (200, 90, 40)), ("dog1", (120, 80, 40)),
                        ("dog2", (110, 70, 50))):
        (work / f"{name}.png").write_bytes(style_png(color))
    key = stack.create_user("mixer")
    run = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=work, env={**stack.env, "KEY": key},
                         capture_output=True, text=True, timeout=420)
    assert run.returncode == 0, f"{run.stdout}\n{run.stderr}\n{stack.logs()}"
    assert (work / "mix0.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
