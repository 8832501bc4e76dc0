"""Backup and restore: a signed report, its images, its versions and its audit trail come back
exactly as they were, in an empty installation of its own (another database, media, models)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.conf import LazySettings
from django.core.management import CommandError, call_command

from tests.factories import PBC_CLASSES, ModelVersionFactory, reviewed_batch
from webportal.accounts.models import Role
from webportal.audit.models import AuditEvent
from webportal.cases.models import Image
from webportal.reports import services as reports
from webportal.reports.models import Report

pytestmark = [pytest.mark.django_db, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[3]

# Run in the restored installation: what a person would look for, as JSON.
INSPECT = """
import json, django
django.setup()
from webportal.audit.models import AuditEvent
from webportal.cases.models import Image, ModelVersion
from webportal.reports.models import Report
from django.core.files.storage import default_storage
reports = [
    {"version": r.version, "status": r.status, "signed_by": r.signed_by.username if r.signed_by
     else None, "signed_at": r.signed_at.isoformat() if r.signed_at else None,
     "differential": r.differential, "comment": r.comment, "batch": r.batch_id}
    for r in Report.objects.order_by("batch_id", "version")
]
images = {i.pk: default_storage.open(i.file.name).read().hex()
          for i in Image.objects.order_by("pk")}
events = list(AuditEvent.objects.order_by("pk").values_list("pk", "action", "actor__username"))
adapted = {v.name: open(v.checkpoint_path, "rb").read().hex() for v in
           ModelVersion.objects.filter(lab__isnull=False)}
print(json.dumps({"reports": reports, "images": images, "events": events, "adapted": adapted}))
"""


def _inspect_here() -> Any:
    from django.core.files.storage import default_storage

    from webportal.cases.models import ModelVersion

    return json.loads(
        json.dumps(
            {
                "reports": [
                    {
                        "version": r.version,
                        "status": r.status,
                        "signed_by": r.signed_by.username if r.signed_by else None,
                        "signed_at": r.signed_at.isoformat() if r.signed_at else None,
                        "differential": r.differential,
                        "comment": r.comment,
                        "batch": r.batch_id,
                    }
                    for r in Report.objects.order_by("batch_id", "version")
                ],
                "images": {
                    str(i.pk): default_storage.open(str(i.file.name)).read().hex()
                    for i in Image.objects.order_by("pk")
                },
                "events": [
                    list(e)
                    for e in AuditEvent.objects.order_by("pk").values_list(
                        "pk", "action", "actor__username"
                    )
                ],
                "adapted": {
                    v.name: Path(v.checkpoint_path).read_bytes().hex()
                    for v in ModelVersion.objects.filter(lab__isnull=False)
                },
            }
        )
    )


def test_a_backup_restored_into_an_empty_install_has_everything_as_it_was(
    lab, lab_case, people, settings: LazySettings, tmp_path: Path
) -> None:
    settings.ADAPTED_MODELS_DIR = tmp_path / "models"
    (tmp_path / "models" / "lab-1").mkdir(parents=True)
    adapted_file = tmp_path / "models" / "lab-1" / "adapted.pt"
    adapted_file.write_bytes(b"an adapted checkpoint" * 100)
    ModelVersionFactory.create(
        lab=lab, name="adapted", checkpoint_path=str(adapted_file), classes=PBC_CLASSES
    )
    model = ModelVersionFactory.create(classes=PBC_CLASSES, threshold=0.5)
    pathologist = people[Role.PATHOLOGIST]
    batch = reviewed_batch(
        case=lab_case, model_version=model, labels=["neutrophil", "lymphocyte", "monocyte"],
        reviewer=pathologist, with_files=True,
    )  # fmt: skip
    preliminary = reports.write_preliminary_report(batch=batch)
    signed = reports.sign_report(
        actor=pathologist,
        report=preliminary,
        comment="Normal.",
        below_minimum_reason="a three-cell test batch",
    )
    reports.amend_report(actor=pathologist, report=signed, reason="Typo", comment="Normal film.")
    assert Report.objects.filter(batch=batch).count() == 2
    assert AuditEvent.objects.filter(lab=lab).count() >= 2
    before = _inspect_here()

    archive = tmp_path / "backup.tar.gz"
    call_command("backup", "--out", str(archive))
    assert archive.is_file()

    # A new installation: its own SQLite database, media and models folders, migrated.
    new = tmp_path / "new"
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DATABASE_URL", "DJANGO_SETTINGS_MODULE", "MEDIA_ROOT"}
    }
    env.update(
        DJANGO_SETTINGS_MODULE="webportal.settings",
        HEMATOVISION_VAR_DIR=str(new),
        ADAPTED_MODELS_DIR=str(new / "adapted"),
        PYTHONPATH=str(ROOT),
        DEBUG="true",
    )

    def manage(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(ROOT / "manage.py"), *args],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    assert manage("migrate", "--noinput", "-v0").returncode == 0
    restored = manage("restore", str(archive))
    assert restored.returncode == 0, restored.stderr[-3000:]
    again = manage("restore", str(archive))  # not into a non-empty installation
    assert again.returncode != 0
    assert "already has labs or users" in again.stderr
    inspected = subprocess.run(
        [sys.executable, "-c", INSPECT], env=env, cwd=tmp_path, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert inspected.returncode == 0, inspected.stderr[-3000:]
    after = json.loads(inspected.stdout.strip().splitlines()[-1])
    assert len(after["reports"]) == len(before["reports"])
    for was, now in zip(before["reports"], after["reports"], strict=True):
        for key in was:
            assert now[key] == was[key], (key, was[key], now[key])
    assert len(after["reports"]) == 2
    assert {r["status"] for r in after["reports"]} <= {Report.Status.FINAL, Report.Status.AMENDED}
    assert {r["signed_by"] for r in after["reports"]} == {pathologist.username}
    assert after["images"] == before["images"]
    assert len(after["images"]) == 3
    assert after["events"] == before["events"]
    assert after["adapted"] == before["adapted"]
    assert (new / "adapted" / "lab-1" / "adapted.pt").is_file()


def test_a_damaged_backup_is_refused_naming_the_file(tmp_path: Path, lab) -> None:
    import tarfile

    archive = tmp_path / "backup.tar.gz"
    call_command("backup", "--out", str(archive), "--no-media")
    damaged = tmp_path / "damaged.tar.gz"
    with tarfile.open(archive) as source, tarfile.open(damaged, "w:gz") as target:
        for member in source.getmembers():
            data = source.extractfile(member)
            if member.name == "database.xml":
                content = data.read().replace(b'name="name"', b'name="nome"', 1) if data else b""
                member.size = len(content)
                target.addfile(member, io.BytesIO(content))
            else:
                target.addfile(member, data)
    from django.contrib.auth.models import User

    from webportal.accounts.models import Lab

    Lab.objects.all().delete()
    User.objects.all().delete()
    with pytest.raises(CommandError, match=r"database\.xml is missing or damaged"):
        call_command("restore", str(damaged))
