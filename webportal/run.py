"""The embedded default in one command: `python -m webportal.run` (what `make run` calls).

Migrates, creates the demo lab and user (printed), registers the shipped model, submits the
demo batch, then runs the portal on http://127.0.0.1:$PORT and one Celery worker until Ctrl-C.

It supervises both: a worker that dies (even of SIGKILL) is cleared away with every process it
started (its pool child, the sweeper's scheduler), the batches it held are sent again at once,
and a new worker starts; a worker that keeps dying, or a portal that dies, stops everything with
a message saying why. Each child is told to stop if this process dies (Linux: PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from types import FrameType

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webportal.settings")

# A worker that dies this many times within the window is not restarted again.
MAX_RESTARTS = 5
RESTART_WINDOW_SECONDS = 120.0
STOP_TIMEOUT_SECONDS = 20.0
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the supervisor dies, whatever kills it."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _say(message: str) -> None:
    print(f"\nHematoVision: {message}\n", file=sys.stderr, flush=True)


def _kill_group(process: subprocess.Popen[bytes], *, grace: float) -> None:
    """Stop a process and everything in its process group (orphans included)."""
    pgid = process.pid  # started with start_new_session: its pid is its group's id
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if process.poll() is not None and not _group_alive(pgid):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    process.wait()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


class Supervisor:
    def __init__(self, *, port: str, var_dir: Path) -> None:
        self.python = sys.executable
        self.manage = [self.python, "manage.py"]
        self.port = port
        self.var_dir = var_dir
        self.worker: subprocess.Popen[bytes] | None = None
        self.portal: subprocess.Popen[bytes] | None = None
        self.stopping = False
        self.deaths: deque[float] = deque()

    def start_worker(self) -> None:
        # One worker process with the sweeper's scheduler (beat) embedded: enough for one
        # machine. Its own process group, so a dead worker's children can be found and stopped.
        self.worker = subprocess.Popen(
            [self.python, "-m", "celery", "-A", "workers", "worker", "--loglevel=INFO",
             "--concurrency=1", "--without-gossip", "--without-mingle", "--without-heartbeat",
             "--beat", "--schedule", str(self.var_dir / "celerybeat-schedule")],
            start_new_session=True,
            preexec_fn=_die_with_parent,  # no threads exist in this process
        )  # fmt: skip

    def start_portal(self) -> None:
        self.portal = subprocess.Popen(
            [*self.manage, "runserver", "--noreload", f"127.0.0.1:{self.port}"],
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )

    def stop(self, signum: int = signal.SIGTERM, frame: FrameType | None = None) -> None:
        self.stopping = True

    def restart_worker(self, returncode: int) -> bool:
        """Clear a dead worker away, send its batches again, start a new one; False: gave up."""
        assert self.worker is not None
        now = time.monotonic()
        self.deaths.append(now)
        while self.deaths and now - self.deaths[0] > RESTART_WINDOW_SECONDS:
            self.deaths.popleft()
        how = f"signal {-returncode}" if returncode < 0 else f"exit status {returncode}"
        _kill_group(self.worker, grace=5.0)  # its pool child and beat would outlive it
        if len(self.deaths) >= MAX_RESTARTS:
            _say(
                f"the worker stopped ({how}) {len(self.deaths)} times within "
                f"{RESTART_WINDOW_SECONDS:.0f} s; stopping the portal too. Read the worker's "
                "log above for the cause."
            )
            return False
        _say(f"the worker stopped ({how}); its batches are sent again and a new worker starts.")
        # The filesystem broker deletes a message when a worker fetches it: the dead worker's
        # batch would wait for the sweeper (minutes). No other worker exists here, so every
        # batch still processing or queued is sent again now; a duplicate message is harmless.
        subprocess.run([*self.manage, "rescue_batches", "--all"], check=False)
        self.start_worker()
        return True

    def run(self) -> int:
        subprocess.run([*self.manage, "migrate", "--noinput"], check=True)
        subprocess.run([*self.manage, "seed_demo"], check=True)
        signal.signal(signal.SIGINT, self.stop)
        signal.signal(signal.SIGTERM, self.stop)
        self.start_worker()
        self.start_portal()
        print(
            f"\nHematoVision: http://127.0.0.1:{self.port}/  "
            "(Ctrl-C stops the portal and the worker)\n",
            flush=True,
        )
        status = 0
        while not self.stopping:
            assert self.portal is not None
            assert self.worker is not None
            if self.portal.poll() is not None:
                _say(
                    f"the portal stopped (exit status {self.portal.returncode}); stopping the "
                    "worker too. Read the portal's log above for the cause."
                )
                status = 1
                break
            code = self.worker.poll()
            if code is not None and not self.restart_worker(code):
                status = 1
                break
            time.sleep(0.5)
        for child in (self.portal, self.worker):
            if child is not None:
                _kill_group(child, grace=STOP_TIMEOUT_SECONDS)
        return status


def main() -> int:
    from django.conf import settings

    port = os.environ.get("PORT", "8000")
    return Supervisor(port=port, var_dir=Path(settings.VAR_DIR)).run()


if __name__ == "__main__":
    sys.exit(main())
