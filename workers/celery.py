"""The Celery app: `celery -A workers worker --loglevel=INFO`.

Configuration comes from Django settings (the CELERY_ prefix), so the embedded default and
scale-out differ only in environment variables.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webportal.settings")

app = Celery("hematovision")
app.config_from_object("django.conf:settings", namespace="CELERY")


def broker_transport_options(broker_url: str, folder: Path) -> dict[str, Any]:
    """Options for the broker; the filesystem transport needs its folders to exist."""
    if not broker_url.startswith("filesystem://"):
        return {}
    for sub in ("queue", "processed", "control"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    return {
        "data_folder_in": str(folder / "queue"),
        "data_folder_out": str(folder / "queue"),
        "processed_folder": str(folder / "processed"),
        "control_folder": str(folder / "control"),
        "store_processed": False,
    }


def use_broker(broker_url: str, folder: Path) -> None:
    """Point this process's producer at a broker; drops pooled connections to the old one."""
    app.conf.update(
        broker_url=broker_url,
        broker_transport_options=broker_transport_options(broker_url, folder),
    )
    # Drop this app's handles only: kombu's shared pools are keyed by URL and options, so a
    # later use_broker back to the old broker finds its pool intact.
    app._pool = None  # type: ignore[attr-defined]
    app.amqp._producer_pool = None  # type: ignore[attr-defined]


def _configure() -> None:
    from django.conf import settings

    app.conf.update(
        broker_transport_options=broker_transport_options(
            settings.CELERY_BROKER_URL, settings.CELERY_BROKER_FOLDER
        ),
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        # The database is where results live; Celery results would be a second copy.
        task_ignore_result=True,
        # A worker that dies mid-batch leaves the message to be delivered again; the
        # batch service only does what is still missing.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
    )


_configure()
app.autodiscover_tasks(["workers"])
