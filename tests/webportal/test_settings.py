"""Production settings: secrets from the environment and Django's deployment checklist."""

from __future__ import annotations

import ast
import os
import re
import runpy
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured

from webportal.settings import PRODUCTION_SIGNALS

ROOT = Path(__file__).resolve().parents[2]


def _manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # CI exports DATABASE_URL (a production signal): each test names what it wants set.
    ignored = {"SECRET_KEY", "DEBUG", "DJANGO_ALLOW_ASYNC_UNSAFE", *PRODUCTION_SIGNALS}
    clean = {k: v for k, v in os.environ.items() if k not in ignored}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**clean, "DJANGO_SETTINGS_MODULE": "webportal.settings", **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_production_settings_pass_the_deployment_checklist(tmp_path: Path) -> None:
    result = _manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        env={
            "SECRET_KEY": "a-production-like-secret-" + "x" * 40,
            "ALLOWED_HOSTS": "hematovision.example.org",
            "HEMATOVISION_VAR_DIR": str(tmp_path),
        },
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_without_a_secret_key_production_settings_refuse_to_start(tmp_path: Path) -> None:
    result = _manage(
        "check",
        env={"HEMATOVISION_VAR_DIR": str(tmp_path), "ALLOWED_HOSTS": "hematovision.example.org"},
    )
    assert result.returncode != 0
    assert "SECRET_KEY must be set" in result.stderr


def test_setting_a_bucket_moves_media_to_s3_compatible_storage(tmp_path: Path) -> None:
    result = _manage(
        "shell",
        "-c",
        "from django.core.files.storage import storages; s = storages['default']; "
        "print(type(s).__name__, s.bucket_name, s.endpoint_url)",
        env={
            "DEBUG": "true",
            "HEMATOVISION_VAR_DIR": str(tmp_path),
            "S3_BUCKET": "smears",
            "S3_ENDPOINT_URL": "http://minio:9000",
        },
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].split() == ["S3Storage", "smears", "http://minio:9000"]


# --- every variable documented, every integer in range ---------------------------------------

SETTINGS_FILES = (ROOT / "webportal" / "settings.py", ROOT / "webportal" / "run.py")
ENV_READERS = {
    "env_str",
    "env_bool",
    "env_int",
    "env_list",
    "env_choice",
    "env_secret",
    "get",
    "getenv",
}


def _variables_read(path: Path) -> set[str]:
    """Names of the environment variables a module reads (env_* helpers, os.environ, getenv)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and node.args:
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called == "get" and not (
                isinstance(func, ast.Attribute) and ast.unparse(func.value) == "os.environ"
            ):
                continue
            first = node.args[0]
            if called in ENV_READERS and isinstance(first, ast.Constant):
                names.add(str(first.value))
        elif isinstance(node, ast.Subscript) and ast.unparse(node.value) == "os.environ":
            if isinstance(node.slice, ast.Constant):
                names.add(str(node.slice.value))
        elif isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "PRODUCTION_SIGNALS" for t in node.targets
        ):
            names |= {str(e.value) for e in ast.walk(node.value) if isinstance(e, ast.Constant)}
    names.discard("DJANGO_SETTINGS_MODULE")  # set by manage.py, not by an operator
    return names


def _documented_variables() -> set[str]:
    """Back-quoted names in the first column of the README's configuration table."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return {name for row in rows for name in re.findall(r"`([A-Z0-9_]+)`", row.split("|")[1])}


def test_the_variable_reader_finds_each_way_the_settings_read_the_environment(
    tmp_path: Path,
) -> None:
    module = tmp_path / "m.py"
    module.write_text(
        "import os\n"
        "A = env_int('ONE', 1)\nB = os.environ.get('TWO')\nC = os.environ['THREE']\n"
        "D = os.getenv('FOUR')\nE = {}.get('NOT_AN_ENV')\nPRODUCTION_SIGNALS = ('FIVE',)\n"
    )
    assert _variables_read(module) == {"ONE", "TWO", "THREE", "FOUR", "FIVE"}


def test_every_variable_the_settings_read_is_in_the_one_configuration_table() -> None:
    read = set().union(*(_variables_read(path) for path in SETTINGS_FILES))
    assert len(read) > 30  # the parser found the settings' reads at all
    missing = read - _documented_variables()
    assert not missing, f"add these to README.md's configuration table: {sorted(missing)}"


def _load_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **env: str) -> dict[str, Any]:
    for name in (*_variables_read(SETTINGS_FILES[0]), "SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HEMATOVISION_VAR_DIR", str(tmp_path))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return runpy.run_path(str(SETTINGS_FILES[0]))


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("INFERENCE_CHUNK_SIZE", "0", "INFERENCE_CHUNK_SIZE must be from 1 to 4096, not 0"),
        ("INFERENCE_CHUNK_SIZE_GPU", "-3", "INFERENCE_CHUNK_SIZE_GPU must be from 1 to 4096"),
        ("UPLOAD_MAX_FILES", "0", "UPLOAD_MAX_FILES must be at least 1, not 0"),
        ("UPLOAD_MAX_FILE_BYTES", "-1", "UPLOAD_MAX_FILE_BYTES must be at least 1"),
        ("UPLOAD_MAX_PIXELS", "10", "UPLOAD_MAX_PIXELS must be from 64 to 100000000, not 10"),
        ("INFERENCE_THREADS", "-1", "INFERENCE_THREADS must be from 0 to 1024"),
        ("BATCH_SHARD_IMAGES", "0", "BATCH_SHARD_IMAGES must be from 1 to 100000, not 0"),
        ("BATCH_MAX_STALLED_ATTEMPTS", "0", "BATCH_MAX_STALLED_ATTEMPTS must be at least 1"),
        ("SWEEP_INTERVAL_SECONDS", "0", "SWEEP_INTERVAL_SECONDS must be at least 1"),
        ("BATCH_STUCK_AFTER_SECONDS", "0", "BATCH_STUCK_AFTER_SECONDS must be at least 1"),
        ("BATCH_RESEND_AFTER_SECONDS", "0", "BATCH_RESEND_AFTER_SECONDS must be at least 1"),
        ("BROKER_VISIBILITY_TIMEOUT_SECONDS", "0", "must be at least 1"),
        ("DATABASE_CONN_MAX_AGE", "-5", "DATABASE_CONN_MAX_AGE must be at least 0"),
        ("SECURE_HSTS_SECONDS", "-1", "SECURE_HSTS_SECONDS must be at least 0"),
        ("TASK_TIME_LIMIT_SECONDS", "200", "must be less than TASK_TIME_LIMIT_SECONDS (200)"),
        ("INFERENCE_CHUNK_SIZE", "lots", "INFERENCE_CHUNK_SIZE must be an integer, not 'lots'"),
        ("LOG_LEVEL", "LOUD", "LOG_LEVEL must be one of DEBUG, INFO"),
        ("DEBUG", "maybe", "DEBUG must be true or false"),
    ],
)
def test_a_setting_out_of_range_stops_start_up_with_a_message_naming_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str, value: str, message: str
) -> None:
    with pytest.raises(ImproperlyConfigured, match=re.escape(message)):
        _load_settings(monkeypatch, tmp_path, **{name: value})


def test_the_defaults_and_the_bounds_themselves_are_accepted(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    loaded = _load_settings(
        monkeypatch, tmp_path, INFERENCE_CHUNK_SIZE="1", INFERENCE_THREADS="0", UPLOAD_MAX_FILES="1"
    )
    assert (loaded["INFERENCE_CHUNK_SIZE"], loaded["DATA_UPLOAD_MAX_NUMBER_FILES"]) == (1, 1)
    assert loaded["INFERENCE_CHUNK_SIZE_GPU"] == 256


# --- manage.py on the embedded default ------------------------------------------------------


def test_the_embedded_default_makes_one_private_key_and_keeps_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    first = _load_settings(monkeypatch, tmp_path)["SECRET_KEY"]
    second = _load_settings(monkeypatch, tmp_path)["SECRET_KEY"]
    key_file = tmp_path / "secret_key"
    assert first == second == key_file.read_text().strip()
    assert len(first) >= 50
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    other = _load_settings(monkeypatch, tmp_path / "elsewhere")["SECRET_KEY"]
    assert other != first


@pytest.mark.parametrize("signal", ["DATABASE_URL", "ALLOWED_HOSTS", "CELERY_BROKER_URL"])
def test_a_deployment_without_a_secret_key_is_refused_even_with_a_local_key_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, signal: str
) -> None:
    _load_settings(monkeypatch, tmp_path)  # a key file exists from local use
    value = {"DATABASE_URL": "postgres://u@db/hv", "CELERY_BROKER_URL": "redis://r:6379/0"}
    with pytest.raises(ImproperlyConfigured, match=f"SECRET_KEY must be set.*{signal}"):
        _load_settings(monkeypatch, tmp_path, **{signal: value.get(signal, "portal.example.org")})


def test_manage_py_runs_local_commands_with_no_variables_at_all(tmp_path: Path) -> None:
    result = _manage("check", env={"HEMATOVISION_VAR_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout
    assert (tmp_path / "secret_key").is_file()


def test_the_embedded_database_its_folder_the_key_and_media_are_the_owners_alone(
    tmp_path: Path,
) -> None:
    var = tmp_path / "var"
    var.mkdir(mode=0o755)
    old = var / "hematovision.sqlite3"
    old.touch(mode=0o644)  # a file an earlier version left world-readable
    old.chmod(0o644)
    result = _manage("migrate", "--noinput", env={"HEMATOVISION_VAR_DIR": str(var)})
    assert result.returncode == 0, result.stderr
    for path, mode in [(var, 0o700), (old, 0o600), (var / "secret_key", 0o600)]:
        assert stat.S_IMODE(path.stat().st_mode) == mode, path
    for sidecar in var.glob("hematovision.sqlite3-*"):
        assert stat.S_IMODE(sidecar.stat().st_mode) & 0o077 == 0, sidecar
    fresh = tmp_path / "fresh"
    result = _manage("check", env={"HEMATOVISION_VAR_DIR": str(fresh)})
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE((fresh / "hematovision.sqlite3").stat().st_mode) == 0o600


def test_stored_media_is_readable_by_the_owner_only(settings, tmp_path: Path) -> None:
    from django.core.files.base import ContentFile
    from django.core.files.storage import FileSystemStorage

    storage = FileSystemStorage(location=tmp_path / "media")
    name = storage.save("cases/1/cell.png", ContentFile(b"png"))
    assert stat.S_IMODE((tmp_path / "media" / name).stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "media" / "cases" / "1").stat().st_mode) == 0o700


def test_secrets_can_come_from_files_named_by_the_file_variables(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    for name, value in [("secret_key", "k" * 60), ("db", "pg-pass"), ("s3", "s3-pass"),
                        ("metrics", "scrape")]:  # fmt: skip
        (secrets / name).write_text(value + "\n")
    loaded = _load_settings(
        monkeypatch,
        tmp_path,
        SECRET_KEY_FILE=str(secrets / "secret_key"),
        DATABASE_URL="postgres://hematovision@db:5432/hematovision",
        DATABASE_PASSWORD_FILE=str(secrets / "db"),
        S3_BUCKET="hematovision",
        S3_SECRET_ACCESS_KEY_FILE=str(secrets / "s3"),
        METRICS_TOKEN_FILE=str(secrets / "metrics"),
    )
    assert loaded["SECRET_KEY"] == "k" * 60
    assert loaded["DATABASES"]["default"]["PASSWORD"] == "pg-pass"
    assert loaded["STORAGES"]["default"]["OPTIONS"]["secret_key"] == "s3-pass"
    assert loaded["METRICS_TOKEN"] == "scrape"


def test_a_secret_file_that_cannot_be_read_stops_start_up_naming_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with pytest.raises(ImproperlyConfigured, match="SECRET_KEY_FILE names /nonexistent/key"):
        _load_settings(monkeypatch, tmp_path, SECRET_KEY_FILE="/nonexistent/key")


def test_the_cache_is_shared_in_redis_when_the_broker_is_redis(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    embedded = _load_settings(monkeypatch, tmp_path)
    assert "CACHES" not in embedded  # Django's default: memory, per process
    scaled = _load_settings(
        monkeypatch, tmp_path, CELERY_BROKER_URL="redis://redis:6379/0", SECRET_KEY="x" * 50
    )
    assert scaled["CACHES"]["default"]["BACKEND"] == "django.core.cache.backends.redis.RedisCache"
    assert scaled["CACHES"]["default"]["LOCATION"] == "redis://redis:6379/0"
    own = _load_settings(monkeypatch, tmp_path, CACHE_URL="redis://cache:6379/3")
    assert own["CACHES"]["default"]["LOCATION"] == "redis://cache:6379/3"
