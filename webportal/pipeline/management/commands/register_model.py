"""Register a classifier checkpoint as a model version.

python manage.py register_model ml/weights/pbc8-mobilenetv2.pt
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from webportal.cases import services
from webportal.pipeline import registration


class Command(BaseCommand):
    help = "Register a checkpoint as a model version (idempotent: same file, same version)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("path", nargs="?", type=Path, default=settings.DEFAULT_MODEL_PATH)
        parser.add_argument("--name", default="", help="display name (default: file stem)")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            version = registration.register_model(
                checkpoint_path=options["path"], name=options["name"]
            )
        except (services.ServiceError, ValueError, KeyError) as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(
            f"Model {version.name}: {version.architecture}, classes {', '.join(version.classes)}, "
            f"sha256 {version.checkpoint_sha256[:12]}"
        )
