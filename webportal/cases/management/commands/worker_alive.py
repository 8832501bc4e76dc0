"""`python manage.py worker_alive [--hostname celery@HOST]`: is this host's worker alive?

Exits 0 when the worker wrote its heartbeat (workers.heartbeat) within WORKER_ALIVE_SECONDS,
else 1 with the reason: the health check of a worker container (docker-compose.yml). The
default name is Celery's own default node name on this host, `celery@<hostname>`.
"""

from __future__ import annotations

import socket
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from webportal.cases.models import WorkerHeartbeat


class Command(BaseCommand):
    help = "Exit 0 when this host's Celery worker sent a heartbeat lately (a health check)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--hostname", default=f"celery@{socket.gethostname()}")

    def handle(self, *args: Any, **options: Any) -> None:
        hostname = options["hostname"]
        beat = WorkerHeartbeat.objects.filter(hostname=hostname).first()
        if beat is None:
            raise CommandError(f"no heartbeat from {hostname} (not started, or stopped)")
        age = (timezone.now() - beat.seen_at).total_seconds()
        if age > settings.WORKER_ALIVE_SECONDS:
            raise CommandError(
                f"{hostname}'s last heartbeat is {age:.0f} s old "
                f"(WORKER_ALIVE_SECONDS is {settings.WORKER_ALIVE_SECONDS})"
            )
        self.stdout.write(f"{hostname}: alive (heartbeat {age:.0f} s ago)")
