"""The process supervisor behind `styledrop up`: start the children, restart one that dies, stop them all.

- A child that exits is restarted after a backoff (1 s, 2 s, 4 s ... up to `backoff_max`); `on_exit(name, pid)`
  runs first, so `up` can requeue the dead worker's jobs at once instead of waiting for its heartbeat to go stale.
- A child that dies `max_crashes` times within `window` seconds is a crash loop: the supervisor logs it, stops
  everything and returns 1 (a supervisor that restarts forever hides a broken configuration).
- Children never outlive the supervisor, whatever kills it: each runs in its own process group (a Ctrl-C in the
  terminal reaches only `up`, which then stops them in order), and on Linux asks the kernel for SIGTERM when its
  parent dies (`PR_SET_PDEATHSIG`), so a SIGKILLed `up` leaves no API holding the port and no worker holding a
  job. SIGTERM is a warm shutdown for the workers: a training job checkpoints and goes back to the queue.

Why not supervisord/circus or Celery's prefork pool: the workers run `--pool solo` (one process owns the model
and the GPU; a prefork pool would fork after CUDA or load the model per child), none of those libraries is a
dependency, and what `up` needs on top of restarting — requeueing a dead worker's rows at once — is ours anyway.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1


def _pdeathsig_preexec() -> Callable[[], None] | None:
    """A preexec_fn that makes the child receive SIGTERM when its parent dies (Linux only, else None).

    libc is resolved here, in the parent: between fork and exec only the prctl call itself runs."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


@dataclass
class _Child:
    name: str
    argv: Sequence[str]
    proc: subprocess.Popen[bytes] | None = None
    crashes: deque[float] = field(default_factory=deque)
    restart_at: float | None = None


class Supervisor:
    def __init__(
        self,
        commands: Mapping[str, Sequence[str]],
        *,
        env: Mapping[str, str] | None = None,
        on_exit: Callable[[str, int], None] | None = None,
        max_crashes: int = 5,
        window: float = 120.0,
        backoff: float = 1.0,
        backoff_max: float = 30.0,
        stop_grace: float = 15.0,
    ) -> None:
        self.children = {name: _Child(name, list(argv)) for name, argv in commands.items()}
        self.env = dict(env) if env is not None else None
        self.on_exit = on_exit
        self.max_crashes, self.window = max_crashes, window
        self.backoff, self.backoff_max, self.stop_grace = backoff, backoff_max, stop_grace
        self._preexec = _pdeathsig_preexec()

    def pids(self) -> dict[str, int]:
        return {c.name: c.proc.pid for c in self.children.values() if c.proc is not None and c.proc.poll() is None}

    def _start(self, child: _Child) -> None:
        # Called from the supervisor's own (main) thread only: PDEATHSIG fires when the *thread* that forked dies.
        child.proc = subprocess.Popen(child.argv, env=self.env, start_new_session=True, preexec_fn=self._preexec)
        child.restart_at = None
        logger.info("started %s (pid %d)", child.name, child.proc.pid)

    def _exited(self, child: _Child, code: int, now: float) -> bool:
        """Handle a child that exited on its own; False when it crash-loops (give up)."""
        assert child.proc is not None
        pid = child.proc.pid
        child.proc = None
        if self.on_exit is not None:
            try:
                self.on_exit(child.name, pid)
            except Exception:
                logger.exception("after %s (pid %d) exited: cleanup failed", child.name, pid)
        child.crashes.append(now)
        while child.crashes and child.crashes[0] < now - self.window:
            child.crashes.popleft()
        if len(child.crashes) >= self.max_crashes:
            logger.critical("%s exited %d times within %.0f s (last code %s): it is crash-looping; giving up and "
                            "stopping everything. Read its log above.", child.name, len(child.crashes),
                            self.window, code)
            return False
        delay = min(self.backoff_max, self.backoff * 2 ** (len(child.crashes) - 1))
        logger.error("%s (pid %d) exited with code %s; restarting it in %.1f s", child.name, pid, code, delay)
        child.restart_at = now + delay
        return True

    def run(self, stop: threading.Event, poll: float = 0.2) -> int:
        """Run until `stop` is set (returns 0) or a child crash-loops (returns 1); all children are stopped."""
        try:
            for child in self.children.values():
                self._start(child)
            while not stop.is_set():
                now = time.monotonic()
                for child in self.children.values():
                    code = child.proc.poll() if child.proc is not None else None
                    if code is not None and not self._exited(child, code, now):
                        return 1
                    if child.proc is None and child.restart_at is not None and now >= child.restart_at \
                            and not stop.is_set():
                        self._start(child)
                stop.wait(poll)
            return 0
        finally:
            self.stop_all()

    def stop_all(self) -> None:
        """SIGTERM every child's process group, wait up to `stop_grace`, then SIGKILL what is left."""
        running = [c for c in self.children.values() if c.proc is not None and c.proc.poll() is None]
        for child in running:
            assert child.proc is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_grace
        for child in running:
            assert child.proc is not None
            try:
                child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("%s did not stop in time; killing it (its job resumes from a checkpoint)",
                               child.name)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.proc.pid, signal.SIGKILL)
                child.proc.wait()
