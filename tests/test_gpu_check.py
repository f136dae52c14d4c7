"""The one GPU call cannot rot: its dry run (`bench/gpu_all.py --device cpu --config tiny --quick`) runs every
section on the CPU, and the shell wrapper the device machine runs is valid and calls it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_dry_run_prints_every_section_and_figure(tmp_path: Path) -> None:
    env = {**os.environ, "OUT": str(tmp_path), "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1",
           "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_all.py"), "--device", "cpu", "--config", "tiny",
                           "--quick", "--budget-s", "240"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    sections = re.findall(r"^## (.+?) \[\d+ s\]$", out, flags=re.M)
    # every section, in order: training before serving before the tests (the order the device call needs)
    assert sections == ["environment", "build", "training", "serving", "gpu tests", "summary"]
    figures = json.loads((tmp_path / "gpu_figures.json").read_text())
    for n in (1, 4, 8, 16):
        assert f"train eager S={n} x 2 steps" in figures
    assert "3-step wall time, eager, S=1 (s)" in figures
    for b in (1, 8):
        assert figures[f"sampling batch {b}, tokens: AmusedPipeline / ours"] > 0
    for k in (0, 1, 2, 4, 8):
        assert figures[f"eager: batch of 8 on {k} distinct adapters (s)"] > 0
    assert figures["eager: 8 calls / one batch on 8 adapters"] > 0
    assert figures["sampling memory per request at 64 rows (MB)"] > 0
    assert figures["GPU engine tests exit code"] == 0  # collected and skipped cleanly without CUDA
    assert "captured runs: not run" in out and "done in" in out


def test_the_device_script_is_valid_bash_and_runs_the_one_process() -> None:
    script = REPO / "bench" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    text = script.read_text()
    calls = [line for line in text.splitlines() if "python3 bench/" in line and not line.startswith("#")]
    assert calls == [next(line for line in calls if "bench/gpu_all.py" in line)]  # one Python process, no other
    assert "bench/COMMIT" in text and "carry=" in text
