"""`bench/train_ops.py` keeps running (it is the step's kernel-count record, docs/benchmarks.md §6): its tiny run
prints the table, and the step still reads nothing back from the device between progress reports nor gathers or
scatters the trainable bank."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_train_ops_counts_kernels_and_one_host_read_per_interval() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(REPO / "bench" / "train_ops.py"), "--config", "tiny", "--styles", "1",
                           "2", "--timed-steps", "0", "--threads", "1"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = re.findall(r"^\| (\d+) \| (\d+) \| (\d+) \| ([\d.]+)x \| (\d+) \| ([\d.]+) \|$", done.stdout,
                      flags=re.M)
    assert [int(r[0]) for r in rows] == [1, 2], done.stdout
    for _s, ops, kernels, _ratio, reads, gathers in rows:
        assert 0 < int(kernels) < int(ops)  # views are counted as ops, not as kernels
        assert int(reads) == 1  # the interval's one loss read-back, nothing inside the steps
        assert float(gathers) == 0  # the bank is read and written by row, as it lies
