"""`make run`'s code path, for real: `python -m webportal.run` on a free port and a fresh var dir.

One supervisor serves the whole module (starting PyTorch three times is the slow part): it must
migrate, seed, serve the login page and finish the demo batch; survive SIGKILL of its worker
(restart it, clear away the dead worker's children, finish the batch it held); and take every
child with it when it is itself killed.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.cookiejar import CookieJar
from pathlib import Path
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.request import HTTPCookieProcessor, Request, build_opener

import pytest

from tests.conftest import SAMPLES

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.worker]

START_TIMEOUT = 240.0
# Images in the batch the worker is killed in: at one image per forward pass (and per commit)
# it cannot finish between two looks at its progress.
KILLED_BATCH_IMAGES = 60


# --- processes -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    pgrp: int
    cmdline: str


def processes() -> list[Proc]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] == "Z":  # a zombie has finished; only its parent's wait is missing
            continue
        found.append(Proc(int(entry.name), int(fields[1]), int(fields[2]), cmdline))
    return found


def descendants(pid: int) -> list[Proc]:
    every = processes()
    result, frontier = [], {pid}
    while frontier:
        children = [p for p in every if p.ppid in frontier]
        result += children
        frontier = {p.pid for p in children}
    return result


def in_group(pgrp: int) -> list[Proc]:
    return [p for p in processes() if p.pgrp == pgrp]


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


# --- a small browser ------------------------------------------------------------------------


class Browser:
    def __init__(self, base: str) -> None:
        self.base = base
        self.jar = CookieJar()
        self.opener = build_opener(HTTPCookieProcessor(self.jar))

    def request(
        self, path: str, data: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, str, str]:
        req = Request(self.base + path, data=data, headers=headers or {})  # noqa: S310
        try:
            with self.opener.open(req, timeout=60) as response:
                return response.status, response.url, response.read().decode()
        except HTTPError as error:
            return error.code, path, error.read().decode()

    def csrf(self) -> str:
        return next(c.value for c in self.jar if c.name == "csrftoken") or ""

    def post(
        self, path: str, fields: dict[str, str], files: list[tuple[str, bytes]] | None = None
    ) -> tuple[int, str, str]:
        boundary = uuid.uuid4().hex
        body = io.BytesIO()
        for name, value in {**fields, "csrfmiddlewaretoken": self.csrf()}.items():
            disposition = f'form-data; name="{name}"'
            body.write(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode())
            body.write(f"{value}\r\n".encode())
        for filename, content in files or []:
            disposition = f'form-data; name="images"; filename="{filename}"'
            body.write(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode())
            body.write(b"Content-Type: image/jpeg\r\n\r\n" + content + b"\r\n")
        body.write(f"--{boundary}--\r\n".encode())
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        return self.request(path, body.getvalue(), headers)

    def status_of(self, batch_id: int) -> dict[str, Any]:
        code, _, body = self.request(f"/batches/{batch_id}/status.json")
        assert code == 200, body
        return dict(json.loads(body))


def login_page_answers(browser: Browser) -> bool:
    try:
        return browser.request("/login/")[0] == 200
    except (URLError, ConnectionError, TimeoutError):
        return False


# --- the supervisor -------------------------------------------------------------------------


@dataclass
class MakeRun:
    process: subprocess.Popen[bytes]
    var_dir: Path
    port: int
    lines: list[str] = field(default_factory=list)
    groups: set[int] = field(default_factory=set)  # every process group seen, for the clean-up

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            self.lines.append(raw.decode(errors="replace"))

    def worker(self) -> Proc | None:
        """The classifying worker (make run also starts one for the `adapt` queue)."""
        children = descendants(self.process.pid)
        self.groups |= {child.pgrp for child in children}
        for child in children:
            if child.ppid == self.process.pid and "classify@" in child.cmdline:
                return child
        return None

    def adapt_worker(self) -> Proc | None:
        for child in descendants(self.process.pid):
            if child.ppid == self.process.pid and "adapt@" in child.cmdline:
                return child
        return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def make_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MakeRun]:
    var_dir = tmp_path_factory.mktemp("var")
    port = _free_port()
    deployment = {"DATABASE_URL", "CELERY_BROKER_URL", "SECRET_KEY", "ALLOWED_HOSTS", "S3_BUCKET"}
    env = {k: v for k, v in os.environ.items() if k not in deployment}
    env.update(
        DJANGO_SETTINGS_MODULE="webportal.settings",
        DEBUG="true",  # what `make run` sets
        PORT=str(port),
        HEMATOVISION_VAR_DIR=str(var_dir),
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",
        INFERENCE_THREADS="1",
        OMP_NUM_THREADS="1",
        INFERENCE_CHUNK_SIZE="1",
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "webportal.run"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    run = MakeRun(process, var_dir, port)
    reader = threading.Thread(target=run.read, daemon=True)
    reader.start()
    try:
        yield run
    finally:
        groups = {process.pid} | run.groups | {p.pgrp for p in descendants(process.pid)}
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
        for leftover in processes():  # whatever a failing test left behind, orphans too
            if leftover.pgrp in groups:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(leftover.pid, signal.SIGKILL)
        reader.join(timeout=5)


@pytest.fixture(scope="module")
def started(make_run: MakeRun) -> tuple[MakeRun, Browser, int]:
    """The supervisor up: the demo seeded, the login page served, the demo user logged in."""
    browser = Browser(f"http://127.0.0.1:{make_run.port}")
    wait_for(lambda: login_page_answers(browser), START_TIMEOUT, "the login page")
    password = re.search(r"username: demo\s+password: (\S+)", make_run.output)
    batch = re.search(r"Demo batch #(\d+)", make_run.output)
    assert password is not None, make_run.output
    assert batch is not None, make_run.output
    browser.post("/login/", {"username": "demo", "password": password.group(1)})
    code, url, _ = browser.request("/")
    assert (code, url.endswith("/login/")) == (200, False), "the demo login did not work"
    return make_run, browser, int(batch.group(1))


def test_make_run_migrates_seeds_serves_the_login_page_and_finishes_the_demo_batch(
    started: tuple[MakeRun, Browser, int],
) -> None:
    make_run, browser, demo_batch = started
    samples = [p for p in SAMPLES.iterdir() if p.is_file() and p.suffix != ".md"]

    status = wait_for(
        lambda: (s := browser.status_of(demo_batch))["finished"] and s,
        START_TIMEOUT,
        "the demo batch",
    )

    assert status["status"] == "done", status
    assert status["processed_images"] == status["total_images"] == len(samples)
    assert "http://127.0.0.1:" in make_run.output
    code, _, page = browser.request(f"/batches/{demo_batch}/")
    assert code == 200
    assert "DEMO-0001" in page


def test_sigkill_of_the_worker_restarts_it_clears_its_children_and_finishes_its_batch(
    started: tuple[MakeRun, Browser, int],
) -> None:
    from tests.conftest import noisy_jpeg_bytes

    make_run, browser, _ = started
    old = wait_for(make_run.worker, 60, "the worker")
    wait_for(lambda: len(in_group(old.pgrp)) >= 3, 60, "the worker's pool child and beat")
    case_id = re.search(r"/cases/(\d+)/", browser.request("/")[2])
    assert case_id is not None
    files = [(f"cell{i}.jpg", noisy_jpeg_bytes()) for i in range(KILLED_BATCH_IMAGES)]
    code, url, body = browser.post(
        f"/cases/{case_id.group(1)}/", {"priority": "routine"}, files=files
    )
    batch = re.search(r"/batches/(\d+)/$", url)
    assert code == 200, body
    assert batch is not None, url
    batch_id = int(batch.group(1))

    # Gate on observed progress: once a chunk is saved, hold SQLite's write lock so the worker
    # cannot save another, check the batch is mid-way, and kill the worker's main process.
    wait_for(lambda: browser.status_of(batch_id)["processed_images"] >= 1, 120, "progress")
    database = sqlite3.connect(make_run.var_dir / "hematovision.sqlite3", timeout=30)
    try:
        database.execute("BEGIN IMMEDIATE")
        done, total = database.execute(
            "SELECT processed_images, total_images FROM cases_batch WHERE id = ?", (batch_id,)
        ).fetchone()
        assert 1 <= done < total == KILLED_BATCH_IMAGES
        os.kill(old.pid, signal.SIGKILL)
        killed_at = time.monotonic()
    finally:
        database.rollback()
        database.close()

    wait_for(lambda: not in_group(old.pgrp), 30, "the dead worker's children to go")
    new = wait_for(lambda: (w := make_run.worker()) and w.pid != old.pid and w, 60, "a new worker")
    assert new.pgrp != old.pgrp
    assert login_page_answers(browser), "the portal must stay up"
    assert "the worker stopped (signal 9)" in make_run.output
    status = wait_for(
        lambda: (s := browser.status_of(batch_id))["finished"] and s, 300, "the killed batch"
    )
    recovered_in = time.monotonic() - killed_at
    print(f"\nbatch of {total} finished {recovered_in:.1f} s after SIGKILL of the worker")
    assert status["status"] == "done", status
    assert status["processed_images"] == total
    # Far sooner than the sweeper (BATCH_STUCK_AFTER_SECONDS, 600 s by default) would have.
    assert recovered_in < 300


def test_when_the_supervisor_is_killed_every_child_goes_with_it(make_run: MakeRun) -> None:
    worker = wait_for(make_run.worker, START_TIMEOUT, "the worker")
    adapt_worker = wait_for(make_run.adapt_worker, START_TIMEOUT, "the adaptation worker")
    assert "-Q adapt" in adapt_worker.cmdline
    groups = {p.pgrp for p in descendants(make_run.process.pid)}
    assert {worker.pgrp, adapt_worker.pgrp} <= groups
    assert len(groups) >= 3  # the portal's and the two workers'

    make_run.process.kill()
    make_run.process.wait()

    wait_for(lambda: not [p for p in processes() if p.pgrp in groups], 60, "every child to stop")
