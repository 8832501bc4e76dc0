"""The embedded default in one command: `python -m webportal.run` (what `make run` calls).

Migrates, creates the demo lab and user (printed), registers the shipped model, submits the
demo batch, then runs the portal on http://127.0.0.1:$PORT and one Celery worker until Ctrl-C.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from types import FrameType

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webportal.settings")


def main() -> int:
    port = os.environ.get("PORT", "8000")
    python = sys.executable
    manage = [python, "manage.py"]
    subprocess.run([*manage, "migrate", "--noinput"], check=True)
    subprocess.run([*manage, "seed_demo"], check=True)

    from django.conf import settings

    # One worker process with the sweeper's scheduler (beat) embedded: enough for one machine.
    worker = subprocess.Popen(
        [python, "-m", "celery", "-A", "workers", "worker", "--loglevel=INFO",
         "--concurrency=1", "--without-gossip", "--without-mingle", "--without-heartbeat",
         "--beat", "--schedule", str(settings.VAR_DIR / "celerybeat-schedule")]
    )  # fmt: skip
    portal = subprocess.Popen([*manage, "runserver", "--noreload", f"127.0.0.1:{port}"])
    children = [portal, worker]

    def stop(signum: int, frame: FrameType | None) -> None:
        for child in children:
            if child.poll() is None:
                child.terminate()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    print(f"\nHematoVision: http://127.0.0.1:{port}/  (Ctrl-C stops the portal and the worker)\n")
    while all(child.poll() is None for child in children):
        time.sleep(0.5)
    stop(signal.SIGTERM, None)
    for child in children:
        try:
            child.wait(timeout=20)
        except subprocess.TimeoutExpired:
            child.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
