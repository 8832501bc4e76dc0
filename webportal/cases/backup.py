"""Backup and restore of an installation: its database, its media and its adapted models.

`manage.py backup` writes one .tar.gz: `database.xml` (Django's dumpdata of every app with
natural keys, as XML: the JSON serializer rounds times to milliseconds, XML keeps them whole;
content types and permissions are made again by `migrate` on the other side, sessions and
worker heartbeats are left out), `media/` (the stored images, from a filesystem media folder),
`models/` (ADAPTED_MODELS_DIR: checkpoints adapted to a lab) and `manifest.json` (when, from
where, counts, and the sha256 of every file). `manage.py restore` puts it back into an empty,
migrated installation (another machine, another database engine: the dump is portable),
checks every file against the manifest, and points the model registry at the new models
folder. A PostgreSQL deployment may also keep pg_dump backups (deploy/README).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.core.management import call_command
from django.db import transaction
from django.utils import timezone

from webportal.accounts.models import Lab
from webportal.cases.models import ModelVersion

FORMAT = 1
EXCLUDED = ["contenttypes", "auth.permission", "sessions", "cases.workerheartbeat"]


class BackupError(Exception):
    """A backup or restore that cannot be done, with the reason."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(root: Path) -> Iterator[Path]:
    if root.is_dir():
        for folder, _, names in os.walk(root):
            for name in sorted(names):
                yield Path(folder) / name


def _media_root() -> Path:
    backend = settings.STORAGES["default"]["BACKEND"]
    if not backend.endswith("FileSystemStorage"):
        raise BackupError(
            f"Media is in object storage ({backend}, bucket {settings.S3_BUCKET!r}): copy the "
            "bucket with the store's own tools (e.g. `mc mirror`), then run backup with "
            "--no-media (deploy/README.md, 'Backup and restore')."
        )
    return Path(settings.MEDIA_ROOT)


def write_backup(*, out: Path, media: bool = True) -> dict[str, Any]:
    """Write the archive to `out`; returns its manifest."""
    models_dir = Path(settings.ADAPTED_MODELS_DIR)
    media_root = _media_root() if media else None
    with tempfile.TemporaryDirectory(prefix="hv-backup-") as work:
        dump = Path(work) / "database.xml"
        call_command(
            "dumpdata", "--natural-foreign", "--natural-primary", "--format=xml",
            *[f"--exclude={name}" for name in EXCLUDED], output=str(dump), verbosity=0,
        )  # fmt: skip
        entries: list[tuple[str, Path]] = [("database.xml", dump)]
        if media_root is not None:
            entries += [(f"media/{p.relative_to(media_root)}", p) for p in _files(media_root)]
        entries += [(f"models/{p.relative_to(models_dir)}", p) for p in _files(models_dir)]
        manifest = {
            "format": FORMAT,
            "created_at": timezone.now().isoformat(),
            "media_included": media_root is not None,
            "adapted_models_dir": str(models_dir),
            "labs": Lab.objects.count(),
            "files": {name: _sha256(path) for name, path in entries},
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(out.name + ".partial")
        with tarfile.open(partial, "w:gz") as archive:
            data = json.dumps(manifest, indent=1).encode()
            info = tarfile.TarInfo("manifest.json")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
            for name, path in entries:
                archive.add(path, arcname=name, recursive=False)
        partial.replace(out)  # a backup file is whole or absent
    return manifest


def restore_backup(*, archive: Path) -> dict[str, Any]:
    """Restore `archive` into this installation, which must be migrated and hold no user or
    lab yet; returns the manifest."""
    if Lab.objects.exists() or User.objects.exists():
        raise BackupError(
            "This installation already has labs or users: restore only into an empty one "
            "(a new database, migrated with `manage.py migrate`)."
        )
    models_dir = Path(settings.ADAPTED_MODELS_DIR)
    with tempfile.TemporaryDirectory(prefix="hv-restore-") as work:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(work, filter="data")  # refuses absolute paths, links out, devices
        root = Path(work)
        manifest: dict[str, Any] = json.loads((root / "manifest.json").read_text())
        if manifest.get("format") != FORMAT:
            raise BackupError(f"Unknown backup format {manifest.get('format')!r}.")
        for name, digest in manifest["files"].items():
            if not (root / name).is_file() or _sha256(root / name) != digest:
                raise BackupError(f"{name} is missing or damaged in the backup (sha256).")
        media_root = _media_root() if manifest["media_included"] else None
        old_models = manifest["adapted_models_dir"].rstrip("/") + "/"
        with transaction.atomic():
            call_command("loaddata", str(root / "database.xml"), verbosity=0)
            # Adapted checkpoints live where this installation keeps them now.
            for version in ModelVersion.objects.filter(checkpoint_path__startswith=old_models):
                relative = version.checkpoint_path.removeprefix(old_models)
                version.checkpoint_path = str(models_dir / relative)
                version.save(update_fields=["checkpoint_path"])
        for name in manifest["files"]:
            top, _, relative = name.partition("/")
            target = {"media": media_root, "models": models_dir}.get(top)
            if target is None:
                continue
            destination = target / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / name, destination)
    return manifest
