"""Settings for the test suite: the real settings module with test-only secrets filled in."""

import os

os.environ.setdefault("SECRET_KEY", "tests-only-secret-key-never-used-in-production")

from webportal.settings import *  # noqa: F403

# The test client speaks plain HTTP; production keeps the redirect.
SECURE_SSL_REDIRECT = False
# Fast hashing: the suite creates many users; strength is Django's concern, not ours here.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# No collectstatic before tests: serve static files from the apps, as in development.
STORAGES = {
    **STORAGES,  # noqa: F405
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = True

if DATABASES["default"]["ENGINE"].endswith("sqlite3"):  # noqa: F405
    # One test database per test run, so two runs on one machine never share a file.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / f"test-{os.getpid()}.sqlite3")}  # noqa: F405
