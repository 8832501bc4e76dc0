"""`python manage.py issue_token --lab SLUG --username NAME [--role ROLE] [--name N] [--read-only]`

Prints the new token alone on stdout (one line), so scripts can capture it:
    TOKEN=$(python manage.py issue_token --lab demo --username lis)
    TOKEN=$(python manage.py issue_token --lab demo --username dr-who --role pathologist)
This command and its output are a contract. Without --role the token is the integrator
(service) account's, created in the lab if it does not exist; it creates, uploads, reads and
subscribes, and never reviews or signs. With --role it is a personal token of that person
alone (the account is created with that role in the lab if needed): it acts as them.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from webportal.accounts.models import Lab
from webportal.api import tokens
from webportal.api.models import ApiToken


class Command(BaseCommand):
    help = (
        "Issue an API token for an integrator account of a lab (or, with --role, a personal "
        "token of a person); prints the token alone."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--lab", required=True, help="The lab's slug (e.g. demo).")
        parser.add_argument(
            "--username", required=True, help="The integrator account, or the person (--role)."
        )
        parser.add_argument(
            "--role",
            choices=sorted(tokens.PERSON_ROLES),
            help="A personal token for this person, who holds (or gets) this role in the lab.",
        )
        parser.add_argument("--name", default="", help="A name for the token (default: user).")
        parser.add_argument("--read-only", action="store_true", help="A token that can only read.")

    def handle(self, *args: Any, **options: Any) -> None:
        lab = Lab.objects.filter(slug=options["lab"]).first()
        if lab is None:
            known = ", ".join(Lab.objects.order_by("slug").values_list("slug", flat=True))
            raise CommandError(f"No lab with slug {options['lab']!r} (labs: {known or 'none'}).")
        scope = ApiToken.Scope.READ if options["read_only"] else ApiToken.Scope.READ_WRITE
        try:
            issued = tokens.issue_token(
                lab=lab,
                username=options["username"],
                name=options["name"],
                scope=scope,
                role=options["role"],
            )
        except tokens.TokenError as exc:
            raise CommandError(str(exc)) from exc
        self.stderr.write(
            f"{'Personal token' if options['role'] else 'Service token'} "
            f"{issued.token.name!r} ({scope}) for {issued.token.user} in {lab}; "
            "it is shown only now."
        )
        self.stdout.write(issued.plaintext)
