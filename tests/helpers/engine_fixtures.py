"""Engine fixtures, a pytest plugin: the tiny aMUSEd preset saved once and loaded through the real loading path.

tests/conftest.py loads this plugin; the GPU check loads it alone (`pytest --noconftest -p
tests.helpers.engine_fixtures tests/test_engine_gpu.py`) on a machine that has the engine's packages only.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def engine_tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny preset written with save_pretrained, once per test session."""
    from trainer.model import ensure_tiny

    return ensure_tiny(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def engine_tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny CLIP written with save_pretrained, once per test session (load it with `load_clip(str(dir))`)."""
    from trainer.clip import ensure_tiny_clip

    return ensure_tiny_clip(tmp_path_factory.mktemp("models") / "tiny-clip")


@pytest.fixture
def engine_parts(engine_tiny_dir: Path):  # type: ignore[no-untyped-def]
    """A fresh tiny model per test (0.2 s), loaded by `load_base` exactly like amused/amused-256."""
    from trainer.model import load_base

    return load_base(str(engine_tiny_dir))


@pytest.fixture(scope="session")
def engine_style_image():  # type: ignore[no-untyped-def]
    """A synthetic 'style': coloured stripes and a grid, whose VQ tokens differ clearly from random images."""
    import numpy as np
    from PIL import Image

    a = np.zeros((256, 256, 3), dtype=np.uint8)
    a[:, ::32] = [255, 0, 0]
    a[::2] = [0, 0, 255]
    for i in range(0, 256, 16):
        a[i : i + 8, :, 1] = 200
    return Image.fromarray(a)
