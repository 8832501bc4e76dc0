"""Create the demo lab, user and a demo batch: `python manage.py seed_demo`.

Idempotent: run again, it resets the demo password and adds no second demo case.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction

from webportal.accounts.models import Lab, Role
from webportal.accounts.services import add_member
from webportal.cases import services
from webportal.cases.models import Case
from webportal.pipeline import registration

DEMO_ACCESSION = "DEMO-0001"
SAMPLES = settings.BASE_DIR / "samples" / "demo"


class Command(BaseCommand):
    help = "Create a demo lab and user, register the shipped model and submit a demo batch."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--username", default="demo")
        parser.add_argument("--samples", type=Path, default=SAMPLES)

    def handle(self, *args: Any, **options: Any) -> None:
        password = secrets.token_urlsafe(12)
        with transaction.atomic():
            lab, _ = Lab.objects.get_or_create(name="Demo Lab", defaults={"slug": "demo"})
            user, _ = get_user_model().objects.get_or_create(username=options["username"])
            user.set_password(password)
            user.save()
            add_member(lab=lab, user=user, role=Role.PATHOLOGIST)
        model = registration.register_model(checkpoint_path=settings.DEFAULT_MODEL_PATH)
        if not Case.objects.filter(lab=lab, accession_number=DEMO_ACCESSION).exists():
            case = services.create_case(
                lab=lab,
                created_by=user,
                accession_number=DEMO_ACCESSION,
                clinical_note="Demo: single-cell images from the PBC dataset (CC BY 4.0).",
            )
            paths = sorted(
                p for p in options["samples"].iterdir() if p.is_file() and p.suffix != ".md"
            )
            handles = [path.open("rb") for path in paths]
            try:
                batch = services.submit_batch(
                    case=case,
                    created_by=user,
                    files=[(p.name, h) for p, h in zip(paths, handles, strict=True)],
                )
            finally:
                for handle in handles:
                    handle.close()
            self.stdout.write(f"Demo batch #{batch.pk}: {batch.total_images} images queued.")
        self.stdout.write(f"Model: {model}")
        self.stdout.write(
            self.style.SUCCESS(
                f"Demo login -> username: {user.get_username()}  password: {password}"
            )
        )
