"""`python manage.py backup [--out FILE] [--no-media]`: the database, media and adapted models
in one .tar.gz (webportal/cases/backup.py); prints the file's path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from webportal.cases import backup


class Command(BaseCommand):
    help = "Back up the database, the media and the adapted models into one .tar.gz."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--out", type=Path, help="default: var/backups/hematovision-TIME.tar.gz"
        )
        parser.add_argument(
            "--no-media", action="store_true", help="media is backed up apart (object storage)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        stamp = timezone.now().strftime("%Y%m%dT%H%M%SZ")
        out = options["out"] or Path(settings.VAR_DIR) / "backups" / f"hematovision-{stamp}.tar.gz"
        try:
            manifest = backup.write_backup(out=out, media=not options["no_media"])
        except backup.BackupError as exc:
            raise CommandError(str(exc)) from exc
        self.stderr.write(f"{len(manifest['files'])} files, {manifest['labs']} labs")
        self.stdout.write(str(out))
