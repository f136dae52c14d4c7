"""The supervisor behind `styledrop up`, with real child processes (small Python programs, no model):
restart with backoff, give up on a crash loop, and children that never outlive a SIGKILLed supervisor."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from testkit.stack import free_port, port_free, process_alive
from worker.ops.supervisor import Supervisor

PY = sys.executable




def _wait(what: str, predicate, timeout: float = 30) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_crash_loop_gives_up_loudly(caplog: pytest.LogCaptureFixture) -> None:
    exits: list[tuple[str, int]] = []
    sup = Supervisor({"bad": [PY, "-c", "import sys; sys.exit(3)"]}, on_exit=lambda n, p: exits.append((n, p)),
                     max_crashes=3, window=600, backoff=0.01)
    with caplog.at_level(logging.ERROR, logger="worker.ops.supervisor"):
        assert sup.run(threading.Event(), poll=0.01) == 1
    assert [n for n, _ in exits] == ["bad"] * 3 and len({p for _, p in exits}) == 3  # restarted twice
    assert "crash-looping" in caplog.text and "exited with code 3; restarting it" in caplog.text


def test_a_dead_child_is_restarted_after_a_backoff(tmp_path: Path) -> None:
    marker = tmp_path / "crashed-once"
    program = ("import os, sys, time\n"
               f"if not os.path.exists({str(marker)!r}):\n"
               f"    open({str(marker)!r}, 'w').close(); sys.exit(1)\n"
               "time.sleep(600)\n")
    exits: list[int] = []
    sup = Supervisor({"flaky": [PY, "-c", program]}, on_exit=lambda n, p: exits.append(p), backoff=0.2)
    stop = threading.Event()
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(sup.run(stop, poll=0.02)))
    thread.start()
    try:
        _wait("a restarted child", lambda: bool(exits) and sup.pids().get("flaky") not in (None, exits[0]))
        pid = sup.pids()["flaky"]
        assert process_alive(pid) and marker.exists()
    finally:
        stop.set()
        thread.join(30)
    assert result == [0] and not process_alive(pid)


SUPERVISED = """
import sys, threading
from worker.ops.supervisor import Supervisor
port = sys.argv[1]
sup = Supervisor({
    "web": [sys.executable, "-m", "http.server", port, "--bind", "127.0.0.1"],
    "sleeper": [sys.executable, "-c", "import time; time.sleep(600)"],
})
stop = threading.Event()
t = threading.Timer(1.0, lambda: print("PIDS", " ".join(map(str, sup.pids().values())), flush=True))
t.start()
sup.run(stop)
"""




@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_children_die_with_a_sigkilled_supervisor_and_free_the_port() -> None:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    sup = subprocess.Popen([PY, "-c", SUPERVISED, str(port)], stdout=subprocess.PIPE, env=env,
                           start_new_session=True)
    try:
        assert sup.stdout is not None
        line = b""
        while not line.startswith(b"PIDS"):  # the children share this stdout
            line = sup.stdout.readline()
            assert line, "the supervisor exited"
        pids = [int(p) for p in line.split()[1:]]
        assert len(pids) == 2 and all(process_alive(p) for p in pids)
        _wait("the child web server", lambda: not port_free(port))
        sup.kill()  # SIGKILL: no chance to clean up; the kernel tells the children
        sup.wait()
        _wait("children gone", lambda: not any(process_alive(p) for p in pids))
        _wait("port free", lambda: port_free(port))
    finally:
        if sup.poll() is None:
            os.killpg(sup.pid, signal.SIGKILL)
