"""Fail the running adaptations of a dead adaptation worker: `manage.py fail_lost_adaptations`.

Only when no adaptation worker is running: `make run` calls it when its one adaptation worker
died (the filesystem broker already deleted the message, and the task is acknowledged on
receipt anyway), so the job's page says at once that it must be started again instead of
waiting ADAPT_STALE_AFTER_SECONDS for the heartbeat to go stale.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from webportal.adaptation import services


class Command(BaseCommand):
    help = "Fail every running adaptation (no adaptation worker may be running)."

    def handle(self, *args: Any, **options: Any) -> None:
        failed = services.fail_running(
            reason="The adaptation worker stopped while running it; start the adaptation again."
        )
        self.stdout.write(f"Failed: {len(failed)} adaptation(s) {failed}")
