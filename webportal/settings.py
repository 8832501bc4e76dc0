"""HematoVision settings: one module, read from the environment.

Defaults run with no services at all (the embedded default): SQLite in var/, a Celery broker
on the local filesystem, media in var/media. Scale-out sets DATABASE_URL (PostgreSQL) and
CELERY_BROKER_URL (Redis); nothing else changes.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import dj_database_url
import django_stubs_ext
from csp.constants import NONE, SELF
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

# Lets the typed generics of django-stubs (ModelAdmin[Case], QuerySet[Case]) run.
django_stubs_ext.monkeypatch()


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    if value.lower() in {"1", "true", "yes", "on"}:
        return True
    if value.lower() in {"0", "false", "no", "off", ""}:
        return False
    raise ImproperlyConfigured(f"{name} must be true or false, not {value!r}")


def env_int(name: str, default: int, *, minimum: int = 1, maximum: int | None = None) -> int:
    """An integer setting, refused at start-up (with the variable's name) outside its range."""
    value = os.environ.get(name)
    if value is None:
        number = default
    else:
        try:
            number = int(value)
        except ValueError as exc:
            raise ImproperlyConfigured(f"{name} must be an integer, not {value!r}") from exc
    if number < minimum or (maximum is not None and number > maximum):
        bounds = f"at least {minimum}" if maximum is None else f"from {minimum} to {maximum}"
        raise ImproperlyConfigured(f"{name} must be {bounds}, not {number}")
    return number


def env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = os.environ.get(name, default)
    if value not in choices:
        raise ImproperlyConfigured(f"{name} must be one of {', '.join(choices)}, not {value!r}")
    return value


def env_secret(name: str, default: str = "") -> str:
    """A secret from NAME, or else from the file that NAME_FILE names (Docker and Kubernetes
    secrets are files), so a deployment need not put secrets in its environment."""
    value = os.environ.get(name)
    if value:
        return value
    path = os.environ.get(f"{name}_FILE")
    if not path:
        return default
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise ImproperlyConfigured(
            f"{name}_FILE names {path}, which cannot be read: {exc}"
        ) from exc


def env_list(name: str, default: list[str]) -> list[str]:
    value = os.environ.get(name)
    if value is None:
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


DEBUG = env_bool("DEBUG", False)

# Runtime state of the embedded default (database, broker folders, media) lives here.
VAR_DIR = Path(env_str("HEMATOVISION_VAR_DIR", str(BASE_DIR / "var")))

# Any of these in the environment with DEBUG off means a real deployment, which must bring its
# own SECRET_KEY; otherwise (the embedded default, or DEBUG on) a local key is made in var/.
PRODUCTION_SIGNALS = (
    "DATABASE_URL",
    "CELERY_BROKER_URL",
    "ALLOWED_HOSTS",
    "CSRF_TRUSTED_ORIGINS",
    "S3_BUCKET",
)


def _local_secret_key(var_dir: Path) -> str:
    """The embedded default's key: random, made once per installation, kept in var/ (0600).

    Lets `manage.py` run on a developer's machine with no variables at all, without a key that
    anyone else knows; created with O_EXCL so the portal and the worker agree on one key.
    """
    from django.core.management.utils import get_random_secret_key

    path = var_dir / "secret_key"
    var_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(50):  # another process may be writing it right now
            key = path.read_text().strip()
            if key:
                return key
            time.sleep(0.1)
        raise ImproperlyConfigured(f"{path} is empty: delete it, or set SECRET_KEY") from None
    key = get_random_secret_key()
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    return key


def _owner_only(database: Path) -> None:
    """The embedded database (and its -wal and -shm files, which SQLite creates with the
    database's mode) readable by the owner only, in a folder only the owner can list (issue 21).
    Created empty with mode 0600 when missing; an existing file of ours is narrowed to it."""
    for path, mode in ((database.parent, 0o700), (database, 0o600)):
        try:
            if path == database and not path.exists():
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            elif path.stat().st_uid == os.getuid() and path.stat().st_mode & 0o077:
                path.chmod(mode)
        except (FileExistsError, PermissionError):
            pass


_secret_key = env_secret("SECRET_KEY")
if not _secret_key:
    production = sorted(name for name in PRODUCTION_SIGNALS if os.environ.get(name))
    if production and not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY must be set in the environment of a deployment with DEBUG off "
            f"({', '.join(production)} set); only the embedded default makes its own"
        )
    _secret_key = _local_secret_key(VAR_DIR)
SECRET_KEY: str = _secret_key

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])
# The portal's address as its users and integrators reach it: the base of the absolute links in
# webhook payloads (a receiver fetches the report from there).
PUBLIC_URL = env_str("PUBLIC_URL", "http://127.0.0.1:8000").rstrip("/")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "csp",
    "axes",
    "webportal.accounts",
    "webportal.cases",
    "webportal.reports",
    "webportal.audit",
    "webportal.worklist",
    "webportal.quality",
    "webportal.adaptation",
    "webportal.api",
    # No models: the worker-side management commands (register_model, seed_demo...).
    "webportal.pipeline",
    # No models: connects the webhooks and the LIS to the report lifecycle's signals.
    "webportal.notifications",
    # No models: pages and the API (registers the API schema's token scheme when ready).
    "webportal.interfaces",
]

MIDDLEWARE = [
    # First: every later step's log lines carry the request's id.
    "webportal.logs.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    # Before the CSRF check, which is the first to parse a request's files.
    "webportal.interfaces.cases.middleware.UploadFileCountMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
    "webportal.interfaces.accounts.middleware.IntegratorsUseTheApiMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: turns a locked-out login into the lockout page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "webportal.urls"
WSGI_APPLICATION = "webportal.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "webportal" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "webportal.interfaces.accounts.context_processors.roles",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'hematovision.sqlite3'}"),
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 0, minimum=0),
    )
}
# The password apart from DATABASE_URL, so it can come from a secret file.
if _database_password := env_secret("DATABASE_PASSWORD"):
    DATABASES["default"]["PASSWORD"] = _database_password
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The portal and the worker write to one SQLite file from two processes: WAL lets
    # readers go on during a write, IMMEDIATE avoids lock upgrades that deadlock, and the
    # timeout waits for the other writer instead of failing at once.
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
    }
    # A file, not memory, so a worker process in the tests can open the test database.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test.sqlite3")}
    # SQLite creates the file but not its folder.
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    _owner_only(Path(DATABASES["default"]["NAME"]))

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {
        "NAME": "django.contrib.auth.password_validation.MinimumLengthValidator",
        "OPTIONS": {"min_length": 12},
    },
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# Login lockout (django-axes) on every password login (/login/, /admin/login/, anything that
# calls authenticate() with the request), webportal.accounts.lockout: after LOGIN_FAILURE_LIMIT
# wrong passwords for a username from one address, that pair cannot log in for
# LOGIN_LOCKOUT_MINUTES, even with the right password (a try meanwhile does not start it again);
# after LOGIN_ADDRESS_FAILURE_LIMIT wrong passwords from one address, whatever the usernames
# (a password spray), that address cannot. Per pair, not per username: nobody can keep a named
# user locked out from elsewhere. A lab admin can unlock a member early (members page, audited;
# or `manage.py axes_reset_username NAME`). A successful login clears the pair's count.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
LOGIN_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 5, maximum=1000)
LOGIN_ADDRESS_FAILURE_LIMIT = env_int("LOGIN_ADDRESS_FAILURE_LIMIT", 20, maximum=100_000)
LOGIN_LOCKOUT_MINUTES = env_int("LOGIN_LOCKOUT_MINUTES", 15, maximum=7 * 24 * 60)
AXES_FAILURE_LIMIT = LOGIN_FAILURE_LIMIT
AXES_COOLOFF_TIME = timedelta(minutes=LOGIN_LOCKOUT_MINUTES)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_HANDLER = "webportal.accounts.lockout.PairAndAddressHandler"
AXES_RESET_ON_SUCCESS = True
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
AXES_LOCKOUT_CALLABLE = "webportal.interfaces.accounts.views.locked_out"
# Behind N reverse proxies (a TLS proxy: 1), the client's address is the N-th from the right in
# X-Forwarded-For; 0 (the default) takes the connection's address (REMOTE_ADDR).
LOGIN_PROXY_COUNT = env_int("LOGIN_PROXY_COUNT", 0, minimum=0, maximum=10)
AXES_CLIENT_IP_CALLABLE = "webportal.accounts.lockout.client_address"

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-gb"
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "webportal" / "static"]
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(VAR_DIR / "static")))
MEDIA_ROOT = Path(env_str("MEDIA_ROOT", str(VAR_DIR / "media")))
# Media is never served by URL: images go through an authorised view (cases.views).
STORAGES: dict[str, dict[str, Any]] = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "django.contrib.staticfiles.storage.StaticFilesStorage"
            if DEBUG
            else "whitenoise.storage.CompressedManifestStaticFilesStorage"
        )
    },
}

# Scale-out keeps images in S3-compatible object storage (MinIO, AWS, ...) when a bucket is set;
# the image view streams them after the lab check, so the bucket stays private.
S3_BUCKET = env_str("S3_BUCKET", "")
if S3_BUCKET:
    STORAGES["default"] = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": S3_BUCKET,
            "endpoint_url": env_str("S3_ENDPOINT_URL", "") or None,
            "access_key": env_str("S3_ACCESS_KEY_ID", "") or None,
            "secret_key": env_secret("S3_SECRET_ACCESS_KEY") or None,
            "region_name": env_str("S3_REGION", "") or None,
            "default_acl": None,
            "file_overwrite": False,
        },
    }

# Stored images and crops readable by the owner only (the web and worker processes run as one
# user); folders likewise (issue 21, docs/SECURITY.md).
FILE_UPLOAD_PERMISSIONS = 0o600
FILE_UPLOAD_DIRECTORY_PERMISSIONS = 0o700
# Uploads: Django spools anything above this to disk instead of memory.
FILE_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024
DATA_UPLOAD_MAX_NUMBER_FILES = env_int("UPLOAD_MAX_FILES", 2000)
UPLOAD_MAX_FILE_BYTES = env_int("UPLOAD_MAX_FILE_BYTES", 25 * 1024 * 1024)
# 25 Mpx fits a 6000 x 4000 camera frame; an upload holds one decoded copy (3 bytes a pixel).
UPLOAD_MAX_PIXELS = env_int("UPLOAD_MAX_PIXELS", 25_000_000, minimum=64, maximum=100_000_000)
# Issue 21: what one upload may make the server decode and store: UPLOAD_MAX_FILES counts ZIP
# members too, and the images' pixels together stay within this budget (500 Mpx: 2,000 cells of
# 500 x 500, or 160 fields of 1600 x 1200 at 2 Mpx each).
UPLOAD_MAX_TOTAL_PIXELS = env_int("UPLOAD_MAX_TOTAL_PIXELS", 500_000_000, minimum=64)
# Issue 23: threads one upload decodes, re-encodes and fits its images in (Pillow and zlib
# release the GIL); 0: one per core, at most 8. Images over 2 Mpx are decoded one at a time
# whatever this says (webportal.cases.uploads.THREADED_MAX_PIXELS); 1: all in the request's thread.
UPLOAD_THREADS = env_int("UPLOAD_THREADS", 0, minimum=0, maximum=64)
# Bytes a lab's uploads may store in all (images and their fitted copies); 0: no quota.
LAB_STORAGE_QUOTA_BYTES = env_int("LAB_STORAGE_QUOTA_BYTES", 200 * 1024**3, minimum=0)

# Celery. The embedded default needs no server: kombu's filesystem transport passes
# messages through a folder both processes can see.
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "filesystem://")
CELERY_BROKER_FOLDER = Path(env_str("CELERY_BROKER_FOLDER", str(VAR_DIR / "broker")))
CELERY_TASK_ALWAYS_EAGER = False
# Images per forward pass: tens on a CPU, hundreds on a GPU.
INFERENCE_CHUNK_SIZE = env_int("INFERENCE_CHUNK_SIZE", 32, maximum=4096)
INFERENCE_CHUNK_SIZE_GPU = env_int("INFERENCE_CHUNK_SIZE_GPU", 256, maximum=4096)
# Intra-op threads per worker process; 0 leaves PyTorch's default (all cores).
INFERENCE_THREADS = env_int("INFERENCE_THREADS", 0, minimum=0, maximum=1024)
# How a CPU worker runs the model (ml.engine): "auto" builds the fastest engine that gives
# eager's answers on a few real cells at start (ONNX Runtime fp32 if installed, else PyTorch
# with BatchNorm folded and channels-last), falling back to eager with the reason logged.
INFERENCE_ENGINE = env_choice(
    "INFERENCE_ENGINE",
    "auto",
    ("auto", "eager", "channels-last", "fused-channels-last", "ort-fp32"),
)
# A batch is split into shards of at most this many images (webportal.cases.models.Shard),
# each claimed by one worker: a large batch uses every worker, a task stays short (time limits
# and the broker's visibility timeout mean something), and a STAT batch or another lab's small
# one waits at most for the shards being worked (the claim order decides the next one).
BATCH_SHARD_IMAGES = env_int("BATCH_SHARD_IMAGES", 256, maximum=100_000)
TASK_SOFT_TIME_LIMIT_SECONDS = env_int("TASK_SOFT_TIME_LIMIT_SECONDS", 300)
TASK_TIME_LIMIT_SECONDS = env_int("TASK_TIME_LIMIT_SECONDS", 360)
if TASK_SOFT_TIME_LIMIT_SECONDS >= TASK_TIME_LIMIT_SECONDS:
    raise ImproperlyConfigured(
        f"TASK_SOFT_TIME_LIMIT_SECONDS ({TASK_SOFT_TIME_LIMIT_SECONDS}) must be less than "
        f"TASK_TIME_LIMIT_SECONDS ({TASK_TIME_LIMIT_SECONDS}): the soft limit warns the task first"
    )
# The sweeper: a processing batch with no progress for this long is re-queued; a queued batch
# not claimed for this long has its message sent again (a broker without persistence may have
# lost it); after this many deliveries without progress a batch fails with the reason.
BATCH_STUCK_AFTER_SECONDS = env_int("BATCH_STUCK_AFTER_SECONDS", 600)
BATCH_RESEND_AFTER_SECONDS = env_int("BATCH_RESEND_AFTER_SECONDS", 900)
BATCH_MAX_STALLED_ATTEMPTS = env_int("BATCH_MAX_STALLED_ATTEMPTS", 5)
SWEEP_INTERVAL_SECONDS = env_int("SWEEP_INTERVAL_SECONDS", 60)
# Redis redelivers an unacknowledged message after this; longer than the longest task.
BROKER_VISIBILITY_TIMEOUT_SECONDS = env_int(
    "BROKER_VISIBILITY_TIMEOUT_SECONDS", 2 * TASK_TIME_LIMIT_SECONDS
)

# Adapting a model to a lab (webportal.adaptation): a lab admin fine-tunes the lab's model on
# its reviewed cells, on the `adapt` queue. Each class needs this many reviewed cells to train
# on and this many held out (other cases than the training cells') to measure it on; this share
# of the cells (percent) is held out.
# At least 4: ml.train holds 15% of the training cells of each class out to calibrate on.
ADAPT_MIN_TRAIN_CELLS = env_int("ADAPT_MIN_TRAIN_CELLS", 10, minimum=4)
ADAPT_MIN_HELDOUT_CELLS = env_int("ADAPT_MIN_HELDOUT_CELLS", 5)
ADAPT_HELDOUT_PERCENT = env_int("ADAPT_HELDOUT_PERCENT", 25, maximum=90)
# How the `adapt` worker adapts (docs/MODELS.md, "From the portal"): "few-cell" (ml.adapt: the
# lab's BatchNorm statistics or Reinhard normalisation towards the training stain, whichever
# gets more reviewed cells right out of fold, and a logistic head on 4 views of them, a
# conservative auto-accept threshold; ml.adapt.FewCellOptions) or "fine-tune" (ml.train
# --init with ADAPT_TRAIN_OPTIONS).
ADAPT_METHOD = env_choice("ADAPT_METHOD", "few-cell", ("few-cell", "fine-tune"))
# With ADAPT_METHOD=fine-tune: `python -m ml.train` options after --init/--data/--out
# (docs/MODELS.md, "Adapting a model").
ADAPT_TRAIN_OPTIONS = env_str(
    "ADAPT_TRAIN_OPTIONS",
    "--trunk-blocks 17 --views 4 --epochs 10 --head-epochs 0 --stain-jitter --batch-size 32",
)
# Intra-op threads of the fine-tune; 0 leaves PyTorch's default (all cores).
ADAPT_THREADS = env_int("ADAPT_THREADS", 0, minimum=0, maximum=1024)
# An adaptation runs for up to this long; one whose worker showed no sign of life for
# ADAPT_STALE_AFTER_SECONDS (or that no worker took in that time) counts as lost, and a new one
# may start.
ADAPT_TIME_LIMIT_SECONDS = env_int("ADAPT_TIME_LIMIT_SECONDS", 6 * 3600)
ADAPT_STALE_AFTER_SECONDS = env_int("ADAPT_STALE_AFTER_SECONDS", 1800)
# Where adapted checkpoints are kept (the workers that classify with them must see the folder)
# and where a running adaptation writes its exported cells (deleted when it ends).
ADAPTED_MODELS_DIR = Path(env_str("ADAPTED_MODELS_DIR", str(VAR_DIR / "models")))
ADAPT_WORK_DIR = Path(env_str("ADAPT_WORK_DIR", str(VAR_DIR / "adaptation")))

# The model a lab gets until its admin picks another; registered by `manage.py register_model`.
DEFAULT_MODEL_PATH = Path(
    env_str("DEFAULT_MODEL_PATH", str(BASE_DIR / "ml" / "weights" / "pbc8-mobilenetv2.pt"))
)

# Bearer token for Prometheus scraping /metrics; empty means staff sessions only.
METRICS_TOKEN = env_secret("METRICS_TOKEN")

# --- Operations (issue 22): readiness, shared cache ------------------------------------------
# Every worker writes a heartbeat row this often (workers.heartbeat); /readyz counts a
# classifying worker as alive when its last heartbeat is at most WORKER_ALIVE_SECONDS old.
WORKER_HEARTBEAT_SECONDS = env_int("WORKER_HEARTBEAT_SECONDS", 10, maximum=3600)
WORKER_ALIVE_SECONDS = env_int("WORKER_ALIVE_SECONDS", 60, maximum=24 * 3600)
# Django's cache (the API's throttle counts, de-duplication) in Redis, shared by every web
# process and worker, when CACHE_URL is set or the broker is Redis; else each process keeps
# its own in memory (the embedded default: one portal process).
CACHE_URL = env_str(
    "CACHE_URL",
    CELERY_BROKER_URL if CELERY_BROKER_URL.startswith(("redis://", "rediss://")) else "",
)
if CACHE_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": CACHE_URL,
            "KEY_PREFIX": "hematovision",
        }
    }
if WORKER_ALIVE_SECONDS <= WORKER_HEARTBEAT_SECONDS:
    raise ImproperlyConfigured(
        f"WORKER_ALIVE_SECONDS ({WORKER_ALIVE_SECONDS}) must be more than "
        f"WORKER_HEARTBEAT_SECONDS ({WORKER_HEARTBEAT_SECONDS}): a live worker would look dead"
    )

REST_FRAMEWORK = {
    # Integrator tokens first, so an unauthenticated call gets 401 with a WWW-Authenticate
    # header; a portal session works too (the interactive docs use it).
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "webportal.interfaces.api.authentication.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": [
        "rest_framework.permissions.IsAuthenticated",
        "webportal.interfaces.api.permissions.TokenScope",
    ],
    "DEFAULT_THROTTLE_CLASSES": ["webportal.interfaces.api.throttling.PerTokenRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {"token": env_str("API_THROTTLE_RATE", "600/minute")},
    # JSON nested deeper than webportal.interfaces.api.parsers.MAX_JSON_DEPTH is a 400 (issue 21).
    "DEFAULT_PARSER_CLASSES": [
        "webportal.interfaces.api.parsers.DepthLimitedJSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "DEFAULT_PAGINATION_CLASS": "webportal.interfaces.api.pagination.Pagination",
    "PAGE_SIZE": 100,
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "webportal.interfaces.api.errors.exception_handler",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "HematoVision API",
    "DESCRIPTION": (
        "White-cell differentials from blood smear images, for lab information systems. "
        "Decision support with a human in the loop: a report is preliminary until a "
        "pathologist signs it. See the README for a worked example."
    ),
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SCHEMA_PATH_PREFIX": r"/api/v1",
    "PREPROCESSING_HOOKS": ["webportal.interfaces.api.schema.only_v1"],
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "webportal.interfaces.api.schema.error_responses_everywhere",
        "webportal.interfaces.api.schema.json_request_bodies",
    ],
    "COMPONENT_SPLIT_REQUEST": True,
    # Swagger UI from this server (no CDN): the page works offline and under a strict CSP.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "ENUM_NAME_OVERRIDES": {
        "BatchStatusEnum": "webportal.cases.models.Batch.Status",
        "ReportStatusEnum": "webportal.reports.models.Report.Status",
    },
}

# Uploads through the API: the whole request body is refused above this (413).
API_UPLOAD_MAX_BYTES = env_int("API_UPLOAD_MAX_BYTES", 1024 * 1024 * 1024)

# Webhooks: a delivery is tried this many times, waiting base * 2**attempt seconds (capped)
# between tries; receivers should refuse a signature older than the replay window.
WEBHOOK_MAX_ATTEMPTS = env_int("WEBHOOK_MAX_ATTEMPTS", 6)
WEBHOOK_RETRY_BASE_SECONDS = env_int("WEBHOOK_RETRY_BASE_SECONDS", 30)
WEBHOOK_RETRY_MAX_SECONDS = env_int("WEBHOOK_RETRY_MAX_SECONDS", 3600)
WEBHOOK_TIMEOUT_SECONDS = env_int("WEBHOOK_TIMEOUT_SECONDS", 10)
WEBHOOK_REPLAY_WINDOW_SECONDS = 300

# --- Issue 21: outbound calls, secrets at rest (docs/SECURITY.md) ------------------------------
# Private hosts or networks that outbound calls (webhooks, HL7) may reach, e.g. an on-premises
# LIS: comma-separated CIDR networks, addresses or host names. Empty by default, DEBUG included:
# loopback, private, link-local and cloud metadata addresses are refused
# (webportal.notifications.outbound).
# Plain http:// targets only with DEBUG on.
OUTBOUND_ALLOWED_NETWORKS = env_list("OUTBOUND_ALLOWED_NETWORKS", [])
# The Fernet key (urlsafe base64 of 32 bytes) that encrypts webhook secrets in the database;
# unset, one is derived from SECRET_KEY (changing SECRET_KEY then makes stored secrets
# unreadable: endpoints must be registered again). Several keys, comma-separated: the first
# encrypts, all decrypt (key rotation).
FIELD_ENCRYPTION_KEYS = env_list("FIELD_ENCRYPTION_KEYS", [])
# How often the outbox sends what is due (Celery beat; `make run` embeds beat in its worker).
WEBHOOK_POLL_SECONDS = env_int("WEBHOOK_POLL_SECONDS", 10, maximum=3600)

# Production hardening: on whenever DEBUG is off, so `check --deploy` is clean there.
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", not DEBUG)
# Health checks call these over plain HTTP from inside the container or the load balancer.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]
SESSION_COOKIE_SECURE = not DEBUG
CSRF_COOKIE_SECURE = not DEBUG
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0 if DEBUG else 31_536_000, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = not DEBUG
SECURE_HSTS_PRELOAD = not DEBUG
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
# Sessions end after SESSION_IDLE_MINUTES without a request (every request pushes the expiry
# on, so an active user is never cut off) and when the browser closes (no cookie expiry).
# A batch page that is following a batch in progress polls, which counts as activity until
# the batch finishes.
SESSION_IDLE_MINUTES = env_int("SESSION_IDLE_MINUTES", 30, maximum=7 * 24 * 60)
SESSION_COOKIE_AGE = SESSION_IDLE_MINUTES * 60
SESSION_SAVE_EVERY_REQUEST = True
SESSION_EXPIRE_AT_BROWSER_CLOSE = env_bool("SESSION_EXPIRE_AT_BROWSER_CLOSE", True)

# Content-Security-Policy (django-csp): scripts, styles, images and fetches only from this
# origin; no inline script or style, no plugins, no framing, forms post only here. A page adds
# behaviour with a static file (`<script src="{% static ... %}" defer>`) and passes data in
# data-* attributes; see docs/ARCHITECTURE.md.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [NONE],
        "script-src": [SELF],
        "style-src": [SELF],
        "img-src": [SELF],
        "font-src": [SELF],
        "connect-src": [SELF],
        "manifest-src": [SELF],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
        "base-uri": [NONE],
        "object-src": [NONE],
    }
}

# One JSON object a line (python-json-logger), portal and workers alike, each with its request
# id, batch id and lab (webportal/logs.py; docs/ARCHITECTURE.md, "Logs").
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"context": {"()": "webportal.logs.ContextFilter"}},
    "formatters": {
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s "
            "%(request_id)s %(batch_id)s %(lab)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
        }
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "json", "filters": ["context"]}
    },
    "root": {
        "handlers": ["console"],
        "level": env_choice("LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")),
    },
}
