"""The embedded default in one command: `python -m webportal.run` (what `make run` calls).

Migrates, creates the demo lab and user (printed), registers the shipped model, submits the
demo batch, then runs the portal on http://127.0.0.1:$PORT and two Celery workers until Ctrl-C:
one classifies (queues stat, housekeeping, routine, with the sweeper's scheduler), the other
consumes only the `adapt` queue (a lab admin's fine-tune, which may run for an hour and must
never hold up a batch).

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

from webportal.celery import ADAPT_QUEUE, QUEUES

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
        python = sys.executable
        self.manage = [python, "manage.py"]
        self.port = port
        # One classifying worker process with the sweeper's scheduler (beat) embedded: enough
        # for one machine.
        worker = [
            python, "-m", "celery", "-A", "workers", "worker", "--loglevel=INFO",
            "--concurrency=1", "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]  # fmt: skip
        self.worker_command = [
            *worker, "-Q", ",".join(QUEUES), "--hostname", "classify@%h",
            "--beat", "--schedule", str(var_dir / "celerybeat-schedule"),
        ]  # fmt: skip
        # The adaptation worker: its own process, so a fine-tune never delays a batch.
        self.adapt_worker_command = [*worker, "-Q", ADAPT_QUEUE, "--hostname", "adapt@%h"]
        self.portal_command = [*self.manage, "runserver", "--noreload", f"127.0.0.1:{port}"]
        # The filesystem broker deletes a message when a worker fetches it: the dead worker's
        # batch would wait for the sweeper (minutes). No other worker exists here, so every
        # batch still processing or queued is sent again now; a duplicate message is harmless.
        self.rescue_command = [*self.manage, "rescue_batches", "--all"]
        # Likewise the one adaptation worker: the adaptation it ran is failed at once, with the
        # reason, so its page does not wait for the heartbeat to go stale.
        self.adapt_rescue_command = [*self.manage, "fail_lost_adaptations"]
        self.worker: subprocess.Popen[bytes] | None = None
        self.adapt_worker: subprocess.Popen[bytes] | None = None
        self.portal: subprocess.Popen[bytes] | None = None
        self.stopping = False
        self.deaths: deque[float] = deque()
        self.adapt_deaths: deque[float] = deque()

    @staticmethod
    def _start(command: list[str]) -> subprocess.Popen[bytes]:
        # Its own process group, so a dead child's own children can be found and stopped.
        return subprocess.Popen(
            command,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # the supervisor starts no threads
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
        subprocess.run(self.rescue_command, check=False)
        self.worker = self._start(self.worker_command)
        return True

    def restart_adapt_worker(self, returncode: int) -> None:
        """Clear a dead adaptation worker away, fail the adaptation it was running (the admin
        starts it again), and start a new worker, unless it keeps dying (then the portal and
        the classifying worker go on without it)."""
        assert self.adapt_worker is not None
        now = time.monotonic()
        self.adapt_deaths.append(now)
        while self.adapt_deaths and now - self.adapt_deaths[0] > RESTART_WINDOW_SECONDS:
            self.adapt_deaths.popleft()
        how = f"signal {-returncode}" if returncode < 0 else f"exit status {returncode}"
        _kill_group(self.adapt_worker, grace=5.0)
        if len(self.adapt_deaths) >= MAX_RESTARTS:
            _say(
                f"the adaptation worker stopped ({how}) {len(self.adapt_deaths)} times within "
                f"{RESTART_WINDOW_SECONDS:.0f} s; it is not started again (batches go on). Read "
                "its log above for the cause."
            )
            self.adapt_worker = None
            return
        _say(f"the adaptation worker stopped ({how}); its adaptation is failed, a new one starts.")
        subprocess.run(self.adapt_rescue_command, check=False)
        self.adapt_worker = self._start(self.adapt_worker_command)

    def run(self) -> int:
        subprocess.run([*self.manage, "migrate", "--noinput"], check=True)
        subprocess.run([*self.manage, "seed_demo"], check=True)
        signal.signal(signal.SIGINT, self.stop)
        signal.signal(signal.SIGTERM, self.stop)
        return self.serve()

    def serve(self) -> int:
        """Start the worker and the portal and watch them until stopped; the exit status."""
        self.worker = self._start(self.worker_command)
        self.adapt_worker = self._start(self.adapt_worker_command)
        self.portal = self._start(self.portal_command)
        print(
            f"\nHematoVision: http://127.0.0.1:{self.port}/  "
            "(Ctrl-C stops the portal and the workers)\n",
            flush=True,
        )
        status = 0
        while not self.stopping:
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
            if self.adapt_worker is not None and self.adapt_worker.poll() is not None:
                self.restart_adapt_worker(self.adapt_worker.returncode)
            time.sleep(0.2)
        for child in (self.portal, self.worker, self.adapt_worker):
            if child is not None:
                _kill_group(child, grace=STOP_TIMEOUT_SECONDS)
        return status


def main() -> int:
    from django.conf import settings

    port = os.environ.get("PORT", "8000")
    return Supervisor(port=port, var_dir=Path(settings.VAR_DIR)).run()


if __name__ == "__main__":
    sys.exit(main())
