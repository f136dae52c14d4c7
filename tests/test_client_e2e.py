"""The Python client (styledrop.Client) against the real service: `styledrop up --model tiny` with its train and
generate workers, over real HTTP. One flow: upload (and its idempotent replay) → the job's event stream and wait →
the adapter downloaded whole → a generation waited for and its images → samples and a human round → v2 among the
versions → problems raised with their codes → a generation and a job cancelled. And the README's "Python client"
block, run as written on the same stack."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from styledrop import Client, ConflictError, Job, NotFoundError, UnprocessableEntityError
from testkit.images import style_png
from testkit.stack import BrowserStack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

PNG = b"\x89PNG\r\n\x1a\n"
README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.fixture(scope="module")
def stack(browser_stack: BrowserStack) -> BrowserStack:
    """The real service (tests/conftest.py), one for this module."""
    return browser_stack


@pytest.fixture
def sd(stack: BrowserStack) -> Iterator[Client]:
    with Client(stack.url, stack.create_user("client"), timeout=30) as client:
        yield client


def test_the_readme_python_block_runs_as_written(stack: BrowserStack, tmp_path: Path) -> None:
    section = README.read_text().split("\n## Python client\n", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert "http://127.0.0.1:8000" in block
    block = block.replace("127.0.0.1:8000", f"127.0.0.1:{stack.port}")  # the only change: this test's free port
    (tmp_path / "watercolor.png").write_bytes(style_png((40, 90, 200)))
    run = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, capture_output=True, text=True, timeout=420,
                         env={**stack.env, "KEY": stack.create_user("reader")})
    assert run.returncode == 0, f"{run.stdout}\n{run.stderr}\n{stack.logs()}"
    assert "progress {" in run.stdout and "409 job_final" in run.stdout, run.stdout
    assert (tmp_path / "style.safetensors").read_bytes()[8:9] == b"{"
    assert (tmp_path / "cat0.png").read_bytes().startswith(PNG)


def test_the_client_runs_the_whole_method_against_the_service(sd: Client, tmp_path: Path) -> None:
    # upload: 202 with the style and its job; the same key again answers the same ones (replayed)
    image = style_png((40, 90, 200))
    up = sd.styles.create([image], descriptor="watercolor painting", content="a mushroom", steps=6, seed=0,
                          idempotency_key="upload-1")
    again = sd.styles.create(image, descriptor="watercolor painting", content="a mushroom", steps=6, seed=0,
                             idempotency_key="upload-1")
    assert not up.replayed and again.replayed and (again.style.id, again.job.id) == (up.style.id, up.job.id)
    assert up.style.descriptor == "watercolor painting" and up.job.state in {"queued", "running"}

    # the job's events as they happen, until it is final; then wait() answers at once with the final job
    events = list(sd.jobs.stream(up.job.id))
    kinds = [e.kind for e in events]
    assert "progress" in kinds and "state" in kinds and all(e.job_id == up.job.id for e in events)
    assert [e.id for e in events] == sorted({e.id for e in events})  # each once, in order
    job = sd.jobs.wait(up.job.id, timeout=60)
    assert isinstance(job, Job) and job.succeeded and job.progress == 1.0 and job.adapter_id
    assert [e.id for e in sd.jobs.events(up.job.id)] == [e.id for e in events]

    # the adapter, written whole and matching its recorded checksum
    adapter = sd.adapters.get(job.adapter_id)
    path = sd.adapters.download(adapter.id, tmp_path / "style.safetensors")
    data = path.read_bytes()
    assert hashlib.sha256(data).hexdigest() == adapter.sha256 and data[8:9] == b"{"
    assert [p.name for p in tmp_path.glob(".*part")] == []

    # a generation: waited for on the server, then by polling; its images as PNG bytes
    gen = sd.generations.create("a cat in watercolor painting style", adapter_id=adapter.id, steps=4, seed=1,
                                num_images=2, wait=30)
    done = sd.generations.wait(gen.id, timeout=120)
    assert done.succeeded and done.adapter_id == adapter.id and len(done.image_urls) == 2
    images = sd.generations.images(done)
    assert len(images) == 2 and all(i.startswith(PNG) for i in images)
    assert sd.generations.image(done.id, 1) == images[1]

    # StyleDrop's feedback round: samples, one picked image, the round's job → version 2
    samples = sd.rounds.samples(up.style.id, prompts=1, images_per_prompt=1, steps=4, seed=3)
    picked = sd.generations.wait(samples[0].id, timeout=120)
    assert picked.succeeded
    round_job = sd.rounds.human(up.style.id, [(picked.id, 0)], steps=4, seed=4)
    assert sd.jobs.wait(round_job.id, timeout=240).succeeded
    versions = sd.styles.versions(up.style.id)
    assert [v.version for v in versions] == [1, 2] and [v.is_default for v in versions] == [False, True]
    assert sd.styles.set_default_version(up.style.id, 1).default_version == 1
    assert {j.id for j in sd.jobs.list(limit=1)} == {up.job.id, round_job.id}  # every page, through `next`

    # problems raised as exceptions carrying their codes
    with pytest.raises(NotFoundError) as missing:
        sd.jobs.get("no-such-job")
    assert missing.value.code == "not_found" and missing.value.status == 404
    with pytest.raises(UnprocessableEntityError) as refused:
        sd.rounds.human(up.style.id, [(picked.id, 5)])
    assert refused.value.code == "unknown_image_index" and refused.value.detail
    with pytest.raises(ConflictError) as final:
        sd.jobs.cancel(up.job.id)
    assert final.value.code == "job_final"

    # cancel: a queued generation ends failed with cancelled_on_request; a second cancel is a conflict
    slow = sd.generations.create("a boat in watercolor painting style", style_id=up.style.id, steps=24, seed=2,
                                 num_images=4)
    cancelled = sd.generations.cancel(slow.id)
    assert cancelled.state == "failed" and cancelled.error and cancelled.error.code == "cancelled_on_request"
    with pytest.raises(ConflictError) as twice:
        sd.generations.cancel(slow.id)
    assert twice.value.code == "generation_final"
    retrain = sd.styles.train_again(up.style.id, steps=50)
    stopped = sd.jobs.cancel(retrain.id)
    assert stopped.state in {"cancelled", "cancelling"}
    assert sd.jobs.wait(retrain.id, timeout=120).state == "cancelled"
