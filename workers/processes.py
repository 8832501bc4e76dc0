"""Starting real `celery worker` processes from Python: the test suite and the benchmark.

A worker started here is the same `celery -A workers worker` a deployment runs (prefork, one
child), pointed at the caller's database, broker folder and media by environment variables.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

DEFAULT_QUEUES = "stat,housekeeping,routine"


def database_url(settings_dict: dict[str, Any]) -> str:
    """A DATABASE_URL naming the database this process is using (e.g. the test database)."""
    engine = settings_dict["ENGINE"]
    if engine.endswith("sqlite3"):
        return f"sqlite:///{settings_dict['NAME']}"
    if engine.endswith("postgresql"):
        user = quote(settings_dict.get("USER") or "")
        password = settings_dict.get("PASSWORD") or ""
        auth = f"{user}:{quote(password)}@" if password else (f"{user}@" if user else "")
        host = settings_dict.get("HOST") or "localhost"
        port = settings_dict.get("PORT") or 5432
        return f"postgres://{auth}{host}:{port}/{settings_dict['NAME']}"
    raise ValueError(f"no URL for database engine {engine}")


@contextmanager
def celery_worker(
    *,
    broker_url: str,
    broker_folder: Path,
    log_path: Path,
    database: str | None = None,
    media_root: Path | None = None,
    settings_module: str | None = None,
    extra_env: dict[str, str] | None = None,
    beat: bool = False,
    queues: str = DEFAULT_QUEUES,
) -> Iterator[subprocess.Popen[bytes]]:
    """A real `celery worker` process (prefork, one child), stopped when the block ends.

    It leads its own process group, so `kill_worker` can take down the parent and its pool
    child at once, as a crash of the machine or container would. By default it uses this
    process's database, media folder and settings module.
    """
    from django.conf import settings
    from django.db import connection

    database = database or database_url(connection.settings_dict)
    media_root = media_root or Path(settings.MEDIA_ROOT)
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": settings_module
        or os.environ.get("DJANGO_SETTINGS_MODULE", "webportal.settings"),
        "DATABASE_URL": database,
        "CELERY_BROKER_URL": broker_url,
        "CELERY_BROKER_FOLDER": str(broker_folder),
        "MEDIA_ROOT": str(media_root),
        "OMP_NUM_THREADS": "1",
        **(extra_env or {}),
    }
    command = [
        sys.executable, "-m", "celery", "-A", "workers", "worker",
        "--pool=prefork", "--concurrency=1", "--loglevel=INFO",
        "--without-gossip", "--without-mingle", "--without-heartbeat",
        "--hostname", f"w-{uuid.uuid4().hex[:8]}@%h", "-Q", queues,
    ]  # fmt: skip
    if beat:
        command += ["--beat", "--schedule", str(broker_folder / f"beat-{uuid.uuid4().hex[:8]}")]
    broker_folder.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            yield process
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    kill_worker(process)


def kill_worker(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the worker and its pool children: no warm shutdown, no acknowledgements."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
