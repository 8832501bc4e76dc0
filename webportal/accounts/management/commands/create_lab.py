"""`python manage.py create_lab NAME --slug SLUG --admin USERNAME [--password-file PATH]`

A lab's first day without Django's admin: the lab and its first lab admin, who then adds the
lab's members, roles and tokens in the portal (/lab/). A new admin user gets the password in
`--password-file` (first line), else a random one printed once on stdout. Run it again with
another name and slug for a second lab; an existing user (the first lab's admin) may be named
as its admin.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from django.contrib.auth.models import User
from django.core.management.base import BaseCommand, CommandError, CommandParser

from webportal.accounts import services


class Command(BaseCommand):
    help = "Create a lab and its first lab admin (a new or an existing user)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="The lab's name, e.g. 'St Mary Haematology'.")
        parser.add_argument("--slug", required=True, help="Short name for URLs and commands.")
        parser.add_argument("--admin", required=True, help="Username of the first lab admin.")
        parser.add_argument("--password-file", type=Path, help="The new admin's password.")

    def handle(self, *args: Any, **options: Any) -> None:
        username = options["admin"]
        generated = ""
        password = ""
        if not User.objects.filter(username=username).exists():
            if options["password_file"]:
                password = options["password_file"].read_text().splitlines()[0].strip()
            else:
                password = generated = secrets.token_urlsafe(16)
        try:
            membership = services.create_lab(
                name=options["name"],
                slug=options["slug"],
                admin_username=username,
                admin_password=password,
            )
        except services.AccountError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(
            self.style.SUCCESS(
                f"Lab {membership.lab.name!r} ({membership.lab.slug}) created; "
                f"{username} is its lab admin."
            )
        )
        if generated:
            self.stdout.write(f"Password for {username} (shown only now): {generated}")
