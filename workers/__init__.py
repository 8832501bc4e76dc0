"""Celery workers: thin tasks that call webportal services.

The app is the project's (`webportal.celery`); `celery -A workers worker` finds it here.
"""

from webportal.celery import app

__all__ = ["app"]
