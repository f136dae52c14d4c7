"""The README's `bash` blocks, run as written: all of them that are not marked `<!-- not run: why -->`, extracted
from README.md in order, in one `bash -euo pipefail` shell against a fresh `styledrop up --model tiny` with a user's
default settings. The only change is the port (`127.0.0.1:8000` becomes this test's free port). The blocks take
about 45 s on an idle 2-core machine and 3 minutes on a loaded one (the whole test: 1 and 4.5 minutes)."""

from __future__ import annotations

import json
import re
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from testkit.images import style_png
from testkit.stack import BrowserStack

README = Path(__file__).resolve().parent.parent / "README.md"
MARK = re.compile(r"<!-- not run: (?P<why>\S.*?) -->")
FENCE = re.compile(r"^```(?P<lang>[^\n`]*)\n(?P<body>.*?)^```[ \t]*$", flags=re.S | re.M)
SHELL_LANGS = {"sh", "shell", "console", "zsh", "shell-session"}  # must be written as ```bash to be run
# The pictures the walk-through names ("any PNG or JPEG stands in"): a user's own files.
PICTURES = {"watercolor": (40, 90, 200), "watercolor2": (200, 90, 40), "dog1": (120, 80, 40), "dog2": (110, 70, 50),
            "photo": (30, 160, 90)}
# Problems the README's blocks show on purpose: the cancel of a finished job, the Errors section's example.
EXPECTED_PROBLEMS = {"job_final", "bad_descriptor"}
PNG = b"\x89PNG\r\n\x1a\n"

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def readme_blocks(text: str) -> tuple[list[str], list[str]]:
    """(the bash blocks to run, in order; the reasons given for those not run). Fails on a marker that does not
    stand right before a bash block and on a shell block not written as ```bash."""
    run: list[str] = []
    skipped: list[str] = []
    marks_used = 0
    for m in FENCE.finditer(text):
        lang = m["lang"].strip()
        assert lang not in SHELL_LANGS, f"write shell blocks as ```bash so this test runs them: {m[0][:80]!r}"
        if lang != "bash":
            continue
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        mark = MARK.fullmatch(before.strip())
        if mark:
            marks_used += 1
            skipped.append(mark["why"])
        else:
            run.append(m["body"])
    assert marks_used == len(MARK.findall(text)), "a `<!-- not run: ... -->` marker must stand right before ```bash"
    return run, skipped


def problems(out: str) -> list[str]:
    """The `code` of every RFC 9457 problem printed in `out`."""
    codes, decoder = [], json.JSONDecoder()
    for m in re.finditer(r'\{"type":', out):
        try:
            obj, _ = decoder.raw_decode(out, m.start())
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and {"status", "code", "detail"} <= obj.keys():
            codes.append(str(obj["code"]))
    return codes


def safetensors_metadata(blob: bytes) -> dict[str, str]:
    (size,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + size])
    assert any(k != "__metadata__" for k in header), "no tensors"
    return dict(header["__metadata__"])


def test_readme_blocks_are_found_and_marked() -> None:
    run, skipped = readme_blocks(README.read_text())
    joined = "\n".join(run)
    # the walk-through, the subject block and the feedback rounds are among the blocks run
    for needle in ("styledrop users create", "$API/v1/styles", "kind=subject", '"mode": "human"',
                   '"mode": "automatic"', '"default_version"'):
        assert needle in joined, needle
    assert all(why.strip() for why in skipped) and len(skipped) < len(run)
    with pytest.raises(AssertionError, match="right before"):
        readme_blocks("<!-- not run: stray -->\n\ntext\n```bash\necho\n```\n")
    with pytest.raises(AssertionError, match="as ```bash"):
        readme_blocks("```sh\necho\n```\n")


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[BrowserStack]:
    s = BrowserStack(tmp_path)
    # A user's `./scripts/run`: `styledrop up --model tiny` with STYLEDROP_DATA_DIR=.styledrop in the folder the
    # blocks run in, and none of the tests' shortcuts (short previews, frequent progress and checkpoints).
    s.env = {k: v for k, v in s.env.items() if not k.startswith("STYLEDROP_")}
    s.env["STYLEDROP_DATA_DIR"] = str(tmp_path / "user" / ".styledrop")
    (tmp_path / "user").mkdir()
    s.start()
    yield s
    s.stop()


def test_every_readme_block_runs_in_order_in_one_shell(stack: BrowserStack, tmp_path: Path) -> None:
    blocks, _ = readme_blocks(README.read_text())
    script = "\n".join(blocks)
    assert script.count("127.0.0.1:8000") == 1
    script = script.replace("127.0.0.1:8000", f"127.0.0.1:{stack.port}")  # the only change: this test's free port
    # What the test reads back afterwards (appended, so the README's own lines run unchanged).
    script += '\nprintf "%s\\n" "STYLE=$STYLE" "KEY=$KEY" > readme-vars.txt\n'
    work = tmp_path / "user"
    for name, color in PICTURES.items():
        (work / f"{name}.png").write_bytes(style_png(color))
    venv = Path(sys.prefix)  # the README's `. .venv/bin/activate`: the environment this test runs in
    assert (venv / "bin" / "activate").is_file(), f"{venv} is not a virtual environment"
    (work / ".venv").symlink_to(venv)
    env = {k: v for k, v in stack.env.items() if not k.startswith("STYLEDROP_")}  # a user's terminal
    started = time.monotonic()
    run = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=work, env=env, capture_output=True,
                         text=True, timeout=540)
    took = time.monotonic() - started
    assert run.returncode == 0, (f"exit {run.returncode} after {took:.0f} s\n{run.stdout[-6000:]}\n"
                                 f"{run.stderr[-6000:]}\n{stack.logs()}")
    assert sorted(set(problems(run.stdout))) == sorted(EXPECTED_PROBLEMS), run.stdout[-6000:]

    # the walk-through: a finished job, its adapter as safetensors with Styledrop's metadata, PNG images
    assert '"state":"succeeded"' in run.stdout
    meta = safetensors_metadata((work / "style.safetensors").read_bytes())
    assert "styledrop" in meta
    for image in ("cat0.png", "mix0.png", "cat-v2.png"):
        assert (work / image).read_bytes()[:8] == PNG, image
    assert "event: end" in run.stdout  # the event stream of the finished job ended by itself

    # the feedback rounds made v2 (human) and v3 (automatic); v1 is the default the README chose
    found = dict(line.split("=", 1) for line in (work / "readme-vars.txt").read_text().splitlines())
    assert found["KEY"].startswith("sd_")
    versions = httpx.get(f"{stack.url}/v1/styles/{found['STYLE']}/versions",
                         headers={"Authorization": f"Bearer {found['KEY']}"}).json()["items"]
    assert [v["version"] for v in versions] == [1, 2, 3]
    assert [v["version"] for v in versions if v["is_default"]] == [1]
    print(f"README blocks: {len(blocks)} run in {took:.0f} s", file=sys.stderr)
