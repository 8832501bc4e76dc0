"""Send batches again whose worker died: `python manage.py rescue_batches [--all]`.

Without --all it is one run of the sweeper. With --all every processing or queued batch is sent
again at once, whatever its age: only when no worker is running (`make run` calls it after its
one worker died, since the filesystem broker has already deleted the message that worker held).
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from webportal.pipeline import sweeper


class Command(BaseCommand):
    help = "Send again the batches a dead worker held (--all: every unfinished batch, now)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--all",
            action="store_true",
            help="every processing or queued batch, whatever its age (no worker may be running)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        report = sweeper.sweep_batches(everything=options["all"])
        self.stdout.write(
            f"Sent again: {len(report.requeued_stuck) + len(report.resent_queued)} batch(es) "
            f"{sorted(report.requeued_stuck + report.resent_queued)}; "
            f"failed after too many attempts: {sorted(report.failed)}"
        )
