"""`python manage.py restore FILE`: a backup (`manage.py backup`) into this installation, which
must be migrated and empty (webportal/cases/backup.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from webportal.cases import backup


class Command(BaseCommand):
    help = "Restore a backup into this (migrated, empty) installation."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("archive", type=Path)

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            manifest = backup.restore_backup(archive=options["archive"])
        except backup.BackupError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(
            self.style.SUCCESS(
                f"Restored {manifest['labs']} labs and {len(manifest['files'])} files "
                f"from the backup of {manifest['created_at']}."
            )
        )
