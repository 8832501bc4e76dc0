"""`make run`'s supervisor with stand-in children (fast); tests/webportal/test_run.py runs the
real ones."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from webportal import run

# A stand-in worker: starts a child of its own (as celery starts its pool and beat), notes both
# pids, then waits.
WORKER = """
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
with open(sys.argv[1], "a") as notes:
    notes.write(f"{os.getpid()} {child.pid}\\n")
time.sleep(120)
"""
SLEEPER = "import time; time.sleep(120)"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_for(condition: Callable[[], object], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


def workers_started(notes: Path) -> list[tuple[int, int]]:
    if not notes.exists():
        return []
    return [(int(a), int(b)) for a, b in (line.split() for line in notes.read_text().splitlines())]


@pytest.fixture
def supervisor(tmp_path: Path) -> run.Supervisor:
    sup = run.Supervisor(port="0", var_dir=tmp_path)
    sup.worker_command = [sys.executable, "-c", WORKER, str(tmp_path / "workers")]
    sup.portal_command = [sys.executable, "-c", SLEEPER]
    sup.adapt_worker_command = [sys.executable, "-c", SLEEPER]
    lost = tmp_path / "lost-adaptations"
    sup.adapt_rescue_command = [sys.executable, "-c", f"open({str(lost)!r}, 'a').write('x')"]
    rescued = tmp_path / "rescued"
    sup.rescue_command = [sys.executable, "-c", f"open({str(rescued)!r}, 'a').write('x')"]
    return sup


def serve_while(sup: run.Supervisor, actions: Callable[[], None]) -> int:
    """Run the supervisor here (it starts processes) while `actions` run beside it."""
    failures: list[BaseException] = []

    def act() -> None:
        try:
            actions()
        except BaseException as exc:  # reported below, in the test's thread
            failures.append(exc)
        finally:
            sup.stopping = True

    thread = threading.Thread(target=act)
    thread.start()
    status = sup.serve()
    thread.join()
    if failures:
        raise failures[0]
    return status


def test_a_worker_killed_with_sigkill_is_replaced_and_its_children_stopped(
    supervisor: run.Supervisor, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    notes = tmp_path / "workers"
    seen: dict[str, object] = {}

    def actions() -> None:
        wait_for(lambda: len(workers_started(notes)) == 1 and supervisor.portal is not None)
        [(worker, child)] = workers_started(notes)
        portal = supervisor.portal
        os.kill(worker, signal.SIGKILL)
        wait_for(lambda: len(workers_started(notes)) == 2)
        seen.update(old_child_alive=alive(child), portal_same=supervisor.portal is portal)
        seen.update(portal_alive=portal is not None and portal.poll() is None)

    status = serve_while(supervisor, actions)

    assert seen == {"old_child_alive": False, "portal_same": True, "portal_alive": True}
    assert (tmp_path / "rescued").read_text() == "x"  # the dead worker's batches, once
    assert "the worker stopped (signal 9)" in capfd.readouterr().err
    assert status == 0
    assert not any(alive(pid) for pair in workers_started(notes) for pid in pair)


def test_a_worker_that_keeps_dying_stops_everything_with_a_message(
    supervisor: run.Supervisor, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    supervisor.worker_command = [sys.executable, "-c", "raise SystemExit(3)"]

    status = supervisor.serve()

    assert status == 1
    err = capfd.readouterr().err
    assert f"the worker stopped (exit status 3) {run.MAX_RESTARTS} times within" in err
    assert (tmp_path / "rescued").read_text() == "x" * (run.MAX_RESTARTS - 1)
    assert supervisor.portal is not None
    assert supervisor.portal.poll() is not None


def test_a_portal_that_dies_stops_the_worker_with_a_message(
    supervisor: run.Supervisor, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    notes = tmp_path / "workers"
    supervisor.portal_command = [sys.executable, "-c", "import time; time.sleep(1)"]

    status = supervisor.serve()

    assert status == 1
    assert "the portal stopped (exit status 0); stopping the worker too" in capfd.readouterr().err
    [(worker, child)] = workers_started(notes)
    assert not alive(worker)
    assert not alive(child)


def test_the_adaptation_worker_is_its_own_process_on_its_own_queue_and_is_replaced_alone(
    supervisor: run.Supervisor, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    real = run.Supervisor(port="0", var_dir=tmp_path)
    assert real.adapt_worker_command[real.adapt_worker_command.index("-Q") + 1] == "adapt"
    assert real.worker_command[real.worker_command.index("-Q") + 1] == "stat,housekeeping,routine"
    seen: dict[str, object] = {}

    def actions() -> None:
        wait_for(lambda: supervisor.adapt_worker is not None and supervisor.worker is not None)
        first, worker = supervisor.adapt_worker, supervisor.worker
        assert first is not None
        os.kill(first.pid, signal.SIGKILL)
        wait_for(lambda: supervisor.adapt_worker is not first)
        seen.update(
            replaced=supervisor.adapt_worker is not None and supervisor.adapt_worker.poll() is None,
            classifying_worker_same=supervisor.worker is worker,
        )

    status = serve_while(supervisor, actions)

    assert seen == {"replaced": True, "classifying_worker_same": True}
    err = capfd.readouterr().err
    assert "the adaptation worker stopped (signal 9); its adaptation is failed" in err
    assert (tmp_path / "lost-adaptations").read_text() == "x"  # its adaptation, once
    assert not (tmp_path / "rescued").exists()  # no batch was held by it
    assert status == 0
