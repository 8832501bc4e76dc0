"""Celery workers: the app and thin tasks that call webportal services."""

from workers.celery import app

__all__ = ["app"]
