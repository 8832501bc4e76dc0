"""What can be checked of docker-compose.yml and deploy/Dockerfile without a container runtime."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
DOCKERFILE = (ROOT / "deploy" / "Dockerfile").read_text()
ONE_SHOTS = {name for name, service in SERVICES.items() if service.get("restart") == "no"}
APP = {name for name, s in SERVICES.items() if str(s.get("image", "")).startswith("hematovision")}


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}` and `${VAR:?message}`, from `env`."""

    def one(match: re.Match[str]) -> str:
        name, op, default = match.group(1), match.group(2) or "", match.group(3) or ""
        if env.get(name):
            return env[name]
        if op == ":?":
            raise KeyError(f"{name} must be set: {default}")
        return default

    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", one, value)


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    return {str(k): str(v) for k, v in env.items()}


def test_the_compose_file_has_the_services_of_the_topology() -> None:
    assert {"db", "redis", "minio", "migrate", "web", "worker-cpu", "worker-adapt", "beat"} <= set(
        SERVICES
    )
    assert {"web", "worker-cpu", "worker-adapt", "beat", "migrate"} <= APP


@pytest.mark.parametrize("operator_hosts", ["", "portal.example.org"])
def test_every_http_health_check_calls_a_host_the_service_allows(operator_hosts: str) -> None:
    checked = 0
    for name, service in SERVICES.items():
        test = " ".join(map(str, (service.get("healthcheck") or {}).get("test") or []))
        for url in re.findall(r"https?://[^'\" ]+", test):
            allowed = interpolate(
                _environment(service)["ALLOWED_HOSTS"], {"ALLOWED_HOSTS": operator_hosts}
            ).split(",")
            assert urlparse(url).hostname in allowed, (name, url, allowed)
            assert urlparse(url).path.strip("/") in {"healthz", "readyz"}
            checked += 1
    assert checked >= 1


def test_health_check_paths_are_exempt_from_the_https_redirect() -> None:
    from django.conf import settings

    for path in ("healthz", "readyz"):
        assert any(re.search(pattern, path) for pattern in settings.SECURE_REDIRECT_EXEMPT)


def test_every_long_running_service_restarts_and_has_a_health_check() -> None:
    for name, service in SERVICES.items():
        if name in ONE_SHOTS:
            continue
        assert service.get("restart") == "unless-stopped", name
        if name == "flower":  # a monitoring extra, off by default
            continue
        check = service.get("healthcheck") or {}
        assert check.get("test"), name
        assert not check.get("disable"), name
    assert {"web", "worker-cpu", "worker-adapt", "worker-gpu", "beat"} <= set(SERVICES) - ONE_SHOTS


def test_every_image_is_pinned_to_a_version() -> None:
    for name, service in SERVICES.items():
        image = interpolate(str(service["image"]), {})
        repository, _, tag = image.rpartition(":")
        assert repository, (name, image)
        assert tag not in {"", "latest"}, (name, image)
        assert not re.fullmatch(r"\d+", tag), f"{name}: {image} names a major version only"
    assert re.search(r"^FROM python:3\.11\.\d+-slim", DOCKERFILE, re.MULTILINE)


def test_no_admin_port_is_published_without_authentication() -> None:
    for name, service in SERVICES.items():
        for port in service.get("ports") or []:
            if name == "web":
                continue
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond this host"
            assert "--basic-auth" in " ".join(map(str, service["command"])), name
    for name in ("db", "redis", "minio"):
        assert not SERVICES[name].get("ports"), f"{name} must not be published"


def test_no_app_service_has_root_credentials_or_inline_secrets() -> None:
    root_secrets = {"minio_root_password"}
    for name in APP:
        service = SERVICES[name]
        env = _environment(service)
        assert not {key for key in env if key.startswith(("MINIO_ROOT", "POSTGRES_"))}, name
        for key, value in env.items():
            if re.search(r"PASSWORD|SECRET|TOKEN", key):
                assert key.endswith("_FILE"), (name, key)
                assert value.startswith("/run/secrets/"), (name, key)
        assert urlparse(env["DATABASE_URL"]).password is None, f"{name}: a password in the URL"
        assert env["S3_ACCESS_KEY_ID"] != SERVICES["minio"]["environment"]["MINIO_ROOT_USER"]
        assert not root_secrets & set(service.get("secrets") or []), name
    for secret in COMPOSE["secrets"].values():
        assert secret["file"].startswith("./secrets/")


def test_the_web_image_has_no_pytorch_and_collects_static_files_where_it_serves_them() -> None:
    stages = dict(re.findall(r"^FROM \S+ AS (\w+)\n(.*?)(?=^FROM |\Z)", DOCKERFILE, re.M | re.S))
    assert set(stages) == {"base", "web", "worker"}
    assert re.search(r"pip install \.\s*$", stages["web"], re.MULTILINE)
    assert "[worker" in stages["worker"]
    # STATIC_ROOT defaults under HEMATOVISION_VAR_DIR: it is set before collectstatic runs.
    assert "HEMATOVISION_VAR_DIR=/var/lib/hematovision" in stages["base"]
    assert "collectstatic" in stages["web"]
    assert SERVICES["web"]["build"]["target"] == "web"
    assert {SERVICES[name]["build"]["target"] for name in APP - {"web"}} == {"worker"}
