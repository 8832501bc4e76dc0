"""The Django project; its Celery app is loaded with it (Celery's Django convention), so
`shared_task`s and `send_task` in any process of the project use this app."""

from webportal.celery import app as celery_app

__all__ = ("celery_app",)
