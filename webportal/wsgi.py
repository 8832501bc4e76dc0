"""WSGI entry point: `gunicorn webportal.wsgi`."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webportal.settings")
application = get_wsgi_application()
