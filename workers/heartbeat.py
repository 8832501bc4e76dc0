"""The worker's heartbeat: a row in the database (WorkerHeartbeat) that /readyz reads.

The worker's main process starts a thread when it is ready to take tasks; the thread writes
the row every WORKER_HEARTBEAT_SECONDS, and a warm shutdown deletes it. A worker killed outright
stops writing, and /readyz stops counting it after WORKER_ALIVE_SECONDS. The database, not the
broker's own events, because every deployment has one (the filesystem broker has no events)
and the portal reads it with the same connection that serves its pages.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any

from celery.signals import worker_ready, worker_shutdown
from django.conf import settings
from django.db import connection
from django.utils import timezone

from webportal.celery import ADAPT_QUEUE, app
from webportal.ops import monitoring

logger = logging.getLogger(__name__)

_stop = threading.Event()


@worker_ready.connect
def start_heartbeat(sender: Any, **_: object) -> None:
    hostname = str(sender.hostname)
    queues = sorted(app.amqp.queues.consume_from)
    classifies = bool(set(queues) - {ADAPT_QUEUE})
    started_at = timezone.now()
    _stop.clear()

    def beat() -> None:
        while True:
            try:
                monitoring.record_worker_heartbeat(
                    hostname=hostname, queues=queues, classifies=classifies, started_at=started_at
                )
            except Exception:
                logger.warning("heartbeat: could not write it", exc_info=True)
            finally:
                connection.close()  # this thread's own connection; SQLite holds no lock
            if _stop.wait(settings.WORKER_HEARTBEAT_SECONDS):
                return

    threading.Thread(target=beat, name="heartbeat", daemon=True).start()


@worker_shutdown.connect
def stop_heartbeat(sender: Any, **_: object) -> None:
    _stop.set()
    try:
        monitoring.forget_worker(hostname=str(sender.hostname))
    except Exception:
        logger.warning("heartbeat: could not remove it", exc_info=True)
    finally:
        connection.close()


def report_engine(engine: str) -> None:
    """In a pool process: write the engine it loaded on its worker's heartbeat row, in a thread
    that waits for the row (the main process may write its first heartbeat after this)."""
    if not engine:
        return
    main_pid, host = os.getppid(), socket.gethostname()

    def write() -> None:
        for _ in range(60):
            try:
                if monitoring.record_worker_engine(main_pid=main_pid, host=host, engine=engine):
                    return
            except Exception:
                logger.warning("heartbeat: could not record the engine", exc_info=True)
            finally:
                connection.close()
            time.sleep(2)

    threading.Thread(target=write, name="engine-report", daemon=True).start()
