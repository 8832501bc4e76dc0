"""Issue 21's findings, re-run on a fresh install: `python -m bench.security_probe [--debug-off]`.

A throw-away install in a temporary folder (SQLite, its own secret key; with --debug-off the
settings of a deployment behind a TLS proxy: DEBUG off, HTTPS requests, a production
SECRET_KEY), driven in-process with Django's test client, so nothing but 127.0.0.1 is ever
contacted (the webhook targets are refused before any connection; the local HTTP server the
redirect check would need is never reached). Each check is one finding of issue 21; it prints
JSON: every check with what it saw and whether it held, and the count that held.

Findings covered: webhooks to inside addresses (registration), a lab admin adding another
lab's pathologist and making a token for them, the add-member form telling which usernames
exist, an integrator token reviewing and signing, Django's admin giving a lab another lab's
model, per-username lockout (a named user kept locked from elsewhere; a password spray never
slowed), inputs answering 500 (a 31-digit filter id, review cells, JSON nested 100,000 deep),
a quote in an accession number injecting into the PDF's Content-Disposition, ZIP members
escaping the file limit, and a world-readable SQLite file.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import stat
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

HUGE = "544949997673097228976128"
INSIDE_URLS = [
    "https://127.0.0.1/hook",
    "https://localhost/hook",
    "https://[::1]/hook",
    "https://[::ffff:127.0.0.1]/hook",
    "https://0.0.0.0/hook",
    "https://169.254.169.254/latest/meta-data/",
    "https://10.0.0.8/hook",
    "https://192.168.1.10/hook",
    "https://metadata.google.internal/computeMetadata/v1/",
    "https://2130706433/hook",
    "http://127.0.0.1:8000/admin/",
]


def _setup(var: Path, *, debug_off: bool) -> None:
    os.environ["HEMATOVISION_VAR_DIR"] = str(var)
    os.environ["DJANGO_SETTINGS_MODULE"] = "webportal.settings"
    for name in ("DATABASE_URL", "CELERY_BROKER_URL", "OUTBOUND_ALLOWED_NETWORKS"):
        os.environ.pop(name, None)
    if debug_off:
        os.environ["DEBUG"] = "false"
        os.environ["SECRET_KEY"] = "probe-" + "k" * 60
        os.environ["LOGIN_PROXY_COUNT"] = "1"
    else:
        os.environ["DEBUG"] = "true"
    os.environ["ALLOWED_HOSTS"] = "testserver"  # Django's test client's host name
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    if debug_off:  # the manifest of static files a DEBUG-off install serves from
        call_command("collectstatic", "--noinput", verbosity=0)


def _png(side: int, shade: int) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (side, side), (shade % 256, shade // 256 % 256, 90)).save(out, "PNG")
    return out.getvalue()


def probe(*, debug_off: bool) -> dict[str, Any]:
    from django.conf import settings
    from django.contrib.auth.models import User
    from django.test import Client
    from rest_framework.test import APIClient

    from ml.testing import make_tiny_checkpoint
    from webportal.accounts import services as accounts
    from webportal.accounts.models import Lab, Membership, Role
    from webportal.api import tokens
    from webportal.api.models import ApiToken, WebhookEndpoint
    from webportal.audit.models import AuditEvent
    from webportal.cases import services, uploads
    from webportal.notifications import webhooks
    from webportal.pipeline import batch_job, registration
    from webportal.reports.models import Report

    secure = debug_off  # behind the TLS proxy every request arrives as https
    extra: dict[str, Any] = {"HTTP_X_FORWARDED_PROTO": "https"} if secure else {}
    checks: dict[str, dict[str, Any]] = {}

    def check(name: str, held: bool, **seen: Any) -> None:
        checks[name] = {"held": bool(held), **seen}

    def client_of(user: User) -> Client:
        client = Client(**extra)
        client.force_login(user)
        return client

    def bearer(plaintext: str) -> APIClient:
        api = APIClient(**extra)
        api.credentials(HTTP_AUTHORIZATION=f"Bearer {plaintext}")
        return api

    lab_a = Lab.objects.create(name="Lab A", slug="lab-a")
    lab_b = Lab.objects.create(name="Lab B", slug="lab-b")
    password = "slide-stain-microscope-41"  # noqa: S105 (a throw-away install's)

    def person(name: str, lab: Lab, role: str) -> User:
        user = User.objects.create_user(username=name, password=password)
        accounts.add_member(lab=lab, user=user, role=role)
        return user

    admin_a = person("admin-a", lab_a, Role.ADMIN)
    staff_a = person("staff-a", lab_a, Role.STAFF)
    path_b = person("path-b", lab_b, Role.PATHOLOGIST)
    lis_a = tokens.issue_token(lab=lab_a, username="lis-a")
    api_a = bearer(lis_a.plaintext)

    # 1. Webhooks to inside addresses, through the API (a read-write integrator token).
    answers = [
        api_a.post("/api/v1/webhooks/", {"url": url}, format="json").status_code
        for url in INSIDE_URLS
    ]
    check("webhooks_inside_refused", all(a == 400 for a in answers),
          accepted=answers.count(201), refused=answers.count(400), of=len(INSIDE_URLS))  # fmt: skip

    # 2. A lab admin adds lab B's pathologist: an invitation, no membership; same page either way.
    admin_client = client_of(admin_a)
    members = f"/lab/{lab_a.pk}/members/"
    pages = []
    for username in ("path-b", "no-such-user"):
        page = admin_client.post(
            members, {"username": username, "role": "pathologist"}, follow=True, secure=secure
        ).content.decode()
        page = re.sub(r'name="csrfmiddlewaretoken" value="[^"]*"', "", page)
        pages.append(page.replace(username, "NAME"))
    joined = Membership.objects.filter(user=path_b, lab=lab_a).exists()
    check("admin_cannot_add_another_labs_member", not joined, membership_created=joined)
    check("add_member_form_does_not_tell_which_names_exist", pages[0] == pages[1])

    # 3. The admin makes a token for a person (Integrations page).
    admin_client.post("/integrations/", {"name": "x", "username": "staff-a", "scope": "read_write"},
                      secure=secure)  # fmt: skip
    made = ApiToken.objects.filter(user=staff_a).exists()
    check("admin_cannot_make_a_token_for_a_person", not made, token_created=made)

    # 4. An integrator token reviews and signs.
    checkpoint = make_tiny_checkpoint(
        Path(settings.VAR_DIR) / "tiny.pt", ["lymphocyte", "monocyte", "neutrophil"]
    )
    registration.register_model(checkpoint_path=checkpoint, name="tiny")
    case = services.create_case(
        lab=lab_a, created_by=None, accession_number='ACC"; filename="evil.exe'
    )
    batch = services.submit_batch(
        case=case, created_by=None, files=[("a.png", io.BytesIO(_png(64, 1)))]
    )
    batch_job.process_batch(batch_id=batch.pk)
    cell = api_a.get(f"/api/v1/batches/{batch.pk}/cells/").json()["results"][0]
    review = api_a.post(cell["url"] + "reviews/", {"label": "monocyte"}, format="json")
    sign = api_a.post(f"/api/v1/batches/{batch.pk}/report/sign/", {}, format="json")
    check("integrator_token_never_reviews_or_signs",
          review.status_code == 403 and sign.status_code == 403,
          review=review.status_code, sign=sign.status_code)  # fmt: skip

    # 5. Django's admin gives lab B lab A's adapted model.
    from webportal.cases.models import ModelVersion

    adapted = ModelVersion.objects.create(
        name="adapted-a", lab=lab_a, architecture="x", classes=["a"], checkpoint_path="/x",
        checkpoint_sha256="f" * 64, input_size=8, mean=[0, 0, 0], std=[1, 1, 1],
    )  # fmt: skip
    root = User.objects.create_superuser("root", password=password)
    client_of(root).post(
        f"/admin/accounts/lab/{lab_b.pk}/change/",
        {"name": "Lab B", "slug": "lab-b", "active_model": adapted.pk,
         "memberships-TOTAL_FORMS": "0", "memberships-INITIAL_FORMS": "0",
         "memberships-MIN_NUM_FORMS": "0", "memberships-MAX_NUM_FORMS": "1000"},
        secure=secure,
    )  # fmt: skip
    lab_b.refresh_from_db()
    check("admin_site_cannot_give_another_labs_model", lab_b.active_model is None,
          audited=AuditEvent.objects.filter(lab=lab_b, actor=root).count())  # fmt: skip

    # 6. Login: a named user kept locked from elsewhere; a password spray from one address.
    attacker = Client(REMOTE_ADDR="198.51.100.7", **extra)
    if debug_off:
        attacker = Client(REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR="198.51.100.7", **extra)
    for _ in range(12):
        attacker.post("/login/", {"username": "staff-a", "password": "wrong"}, secure=secure)
    victim = (
        Client(REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR="203.0.113.9", **extra)
        if debug_off
        else Client(REMOTE_ADDR="203.0.113.9", **extra)
    )
    own = victim.post("/login/", {"username": "staff-a", "password": password}, secure=secure)
    check("a_user_is_not_locked_out_from_elsewhere", own.status_code == 302,
          status=own.status_code)  # fmt: skip
    sprayed = [f"spray-{n}" for n in range(12)]
    for name in sprayed:
        User.objects.create_user(username=name, password=password)
    sprayer = Client(REMOTE_ADDR="198.51.100.99", **extra)
    if debug_off:
        sprayer = Client(REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR="198.51.100.99", **extra)
    statuses = [
        sprayer.post("/login/", {"username": name, "password": guess}, secure=secure).status_code
        for guess in ("Winter2026!", "Password123")
        for name in sprayed
    ]
    first_429 = statuses.index(429) + 1 if 429 in statuses else None
    check("a_password_spray_is_slowed", first_429 is not None,
          tries=len(statuses), first_refused_at=first_429)  # fmt: skip

    # 7. Inputs that answered 500.
    staff_api = bearer(tokens.issue_personal_token(user=staff_a, lab=lab_a).plaintext)
    filtered = api_a.get("/api/v1/batches/", {"case": HUGE}).status_code
    cells = staff_api.post(
        f"/api/v1/batches/{batch.pk}/reviews/",
        {"cells": [int(HUGE)], "label": "monocyte"},
        format="json",
    ).status_code
    deep = api_a.generic("POST", "/api/v1/cases/", "[" * 100_000 + "]" * 100_000,
                         content_type="application/json").status_code  # fmt: skip
    check("bad_input_is_400", {filtered, cells, deep} == {400},
          filter=filtered, review_cells=cells, json_100000_deep=deep)  # fmt: skip
    pdf = api_a.get(f"/api/v1/batches/{batch.pk}/report/pdf/")
    disposition = pdf.get("Content-Disposition", "")
    check("content_disposition_has_one_safe_filename",
          disposition.count("filename=") == 1 and "evil.exe\"" not in disposition,
          header=disposition)  # fmt: skip

    # 8. ZIP members against the file limit (tiny images: the count is what is probed).
    zip_members = settings.DATA_UPLOAD_MAX_NUMBER_FILES + 100
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for number in range(zip_members):
            zf.writestr(f"c{number}.png", _png(8, number))
    results = list(uploads.inspect_uploads([("cells.zip", io.BytesIO(archive.getvalue()))],
                                           limits=services.upload_limits()))  # fmt: skip
    accepted = sum(isinstance(r, uploads.AcceptedImage) for r in results)
    limit = settings.DATA_UPLOAD_MAX_NUMBER_FILES
    check("zip_members_count_against_the_file_limit", accepted <= limit,
          members=zip_members, accepted=accepted, limit=limit)  # fmt: skip

    # 9. At rest.
    database = Path(settings.DATABASES["default"]["NAME"])
    mode = stat.S_IMODE(database.stat().st_mode)
    check("sqlite_file_owner_only", mode & 0o077 == 0, mode=oct(mode))

    del WebhookEndpoint, webhooks, Report  # imported for the reader: what the checks touch
    held = sum(check["held"] for check in checks.values())
    return {
        "install": "DEBUG off, behind a TLS proxy" if debug_off else "default (DEBUG on)",
        "held": held,
        "checks": len(checks),
        "results": checks,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--debug-off", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        _setup(Path(folder) / "var", debug_off=args.debug_off)
        report = probe(debug_off=args.debug_off)
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0 if report["held"] == report["checks"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
