"""A generate worker's shared batch with one request the sampler cannot run: only that generation fails, with a
reason; the others succeed with the images they get alone, whatever their init images' sizes."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

import trainer
from storage.blobs import new_key
from storage.models import Generation
from storage.users import create_user
from tests.helpers.db import get_row, make_generation
from tests.helpers.spies import record_calls
from worker import generation
from worker.runtime import Runtime


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def _put(rt: Runtime, im: Image.Image) -> str:
    key = new_key("uploads", "png")
    rt.store.put_bytes(key, _png(im))
    return key


def test_one_invalid_generation_fails_alone_and_the_others_render_as_alone(worker_runtime: Runtime,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    rt = worker_runtime
    with rt.session_factory() as s:
        owner = create_user(s, "isolation").id
        s.commit()
    init = _put(rt, Image.fromarray(np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)))
    wide = _put(rt, Image.fromarray(np.random.default_rng(1).integers(0, 256, (128, 320, 3), dtype=np.uint8)))
    stripe = Image.new("L", (256, 256))
    stripe.paste(255, (0, 0, 4, 256))  # passes the upload checks, but selects no token to repaint
    gens = [
        make_generation(rt, owner, None, prompt="a cat"),
        make_generation(rt, owner, None, prompt="a boat", init_image_key=init, strength=0.5),
        make_generation(rt, owner, None, prompt="a dog", init_image_key=init, mask_key=_put(rt, stripe),
                        strength=1.0),
        make_generation(rt, owner, None, prompt="a bridge", init_image_key=wide, strength=0.5),  # its own size
    ]
    calls = record_calls(monkeypatch, trainer, "sample")
    assert generation.run_generate(rt, gens[0]) == "done"
    rows = [get_row(rt, Generation, g) for g in gens]
    assert [r.state for r in rows] == ["succeeded", "succeeded", "failed", "succeeded"]
    assert rows[2].error_code == "invalid_request" and "no region to repaint" in rows[2].error_message
    assert sorted(len(c) for c in calls) == [1, 2]  # the 256 px rows together, the 320x128 one apart
    wide_image = Image.open(io.BytesIO(rt.store.get_bytes(rows[3].image_keys[0])))
    assert wide_image.size == (320, 128)
    by_prompt = {r.prompt: r for c in calls for r in c}
    for row in (rows[0], rows[1], rows[3]):
        (alone,) = trainer.sample(rt.parts(), [by_prompt[row.prompt]])
        assert alone.image is not None
        stored = Image.open(io.BytesIO(rt.store.get_bytes(row.image_keys[0])))
        assert np.array_equal(np.asarray(stored.convert("RGB")), np.asarray(alone.image)), row.prompt
