"""The production topology of docker-compose.yml, run here as processes.

What each container would run, with the compose file's own commands and environment (read
from docker-compose.yml and deploy/Dockerfile, not copied here): collectstatic as the web
image's build does it, migrations and the model's registration as `migrate` does, gunicorn
with DEBUG off, two classifying workers in separate working folders sharing one media store,
the adaptation worker and beat, against this machine's PostgreSQL and Redis. Then a batch
through the API, a classifying worker SIGKILLed mid-batch, and the checks: the login page and
its static files, /readyz, exactly one prediction per image, the report.

What differs from the containers, and why: hosts are 127.0.0.1 (db, redis); MinIO is replaced
by one media folder the processes share (no MinIO here); /run/secrets and /var/lib/hematovision
are folders of the test; each classifying worker names its node (`--hostname`: containers
differ by host name, processes on one host do not); the sweeper's timings are shortened
(SWEEP_INTERVAL_SECONDS 5, BATCH_STUCK_AFTER_SECONDS 15) and chunks are small
(INFERENCE_CHUNK_SIZE 2) so that a killed worker's batch is rescued within the test's time.

Needs PostgreSQL and Redis (DEPLOY_TEST_POSTGRES, default postgres://postgres@127.0.0.1:5432,
and DEPLOY_TEST_REDIS_URL, default redis://127.0.0.1:6379/12); skipped without them, failed in
CI. Makes its own database (hv_deploy_<pid>) and flushes its Redis database.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest
from PIL import Image as PILImage

from tests.deploy.test_compose_file import DOCKERFILE, SERVICES, interpolate
from tests.services import free_port, require_service, wait_until

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = sorted((ROOT / "samples" / "demo").glob("*.jpg"))
POSTGRES = os.environ.get("DEPLOY_TEST_POSTGRES", "postgres://postgres@127.0.0.1:5432")
REDIS_URL = os.environ.get("DEPLOY_TEST_REDIS_URL", "redis://127.0.0.1:6379/12")
VAR = "/var/lib/hematovision"
# `python`, `celery` and `gunicorn` as the image has them on its PATH: this virtualenv's.
SCRIPTS_PATH = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"

pytestmark = [pytest.mark.deploy, pytest.mark.slow]


class Topology:
    def __init__(self, tmp: Path, database: str) -> None:
        self.tmp = tmp
        self.database = database
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.media = tmp / "media"
        self.media.mkdir()
        secrets = tmp / "secrets"
        secrets.mkdir()
        for name in ("secret_key", "postgres_password", "minio_app_password", "metrics_token"):
            (secrets / name).write_text(f"{name}-{uuid.uuid4().hex}{uuid.uuid4().hex}\n")
        self.secrets = secrets
        self.port = free_port()

    def env(self, service: str, var_dir: Path) -> dict[str, str]:
        """The service's environment from docker-compose.yml, pointed at this machine."""
        compose = {
            key: interpolate(str(value), {})
            for key, value in (SERVICES[service].get("environment") or {}).items()
        }
        compose = {
            key: value.replace("/run/secrets/", f"{self.secrets}/")
            for key, value in compose.items()
            if not key.startswith("S3_")  # no MinIO here: one shared media folder instead
        }
        database = urlparse(compose["DATABASE_URL"])
        assert database.hostname == "db"
        compose["DATABASE_URL"] = f"{POSTGRES}/{self.database}"
        assert urlparse(compose["CELERY_BROKER_URL"]).hostname == "redis"
        compose["CELERY_BROKER_URL"] = REDIS_URL
        base = {k: v for k, v in os.environ.items() if k in {"HOME", "LANG", "TMPDIR"}}
        base["PATH"] = SCRIPTS_PATH
        return {
            **base,
            **compose,
            "PYTHONPATH": str(ROOT),
            "PYTHONUNBUFFERED": "1",
            "HEMATOVISION_VAR_DIR": str(var_dir),  # the Dockerfile's ENV, per container
            "MEDIA_ROOT": str(self.media),
            "ADAPTED_MODELS_DIR": str(self.tmp / "models"),  # the shared `adaptedmodels` volume
            "OMP_NUM_THREADS": "1",
            "SWEEP_INTERVAL_SECONDS": "5",
            "BATCH_STUCK_AFTER_SECONDS": "15",
            "INFERENCE_CHUNK_SIZE": "2",
        }

    def folder(self, name: str) -> Path:
        path = self.tmp / name
        path.mkdir(exist_ok=True)
        return path

    def run(self, command: list[str], *, env: dict[str, str], cwd: Path) -> str:
        done = subprocess.run(
            command, env=env, cwd=cwd, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, f"{command}: {done.stdout[-2000:]}{done.stderr[-3000:]}"
        return done.stdout

    def start(self, name: str, command: list[str], *, env: dict[str, str], cwd: Path) -> None:
        log = (self.tmp / f"{name}.log").open("wb")
        self.processes[name] = subprocess.Popen(
            command, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def kill(self, name: str) -> None:
        process = self.processes[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
        deadline = time.monotonic() + 30
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def logs(self) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-2500:]}"
            for path in sorted(self.tmp.glob("*.log"))
        )

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def _http(
    url: str, *, token: str = "", data: bytes | None = None, content_type: str = ""
) -> tuple[int, bytes]:
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if content_type:
        headers["Content-Type"] = content_type
    request = urllib.request.Request(url, data=data, headers=headers)  # noqa: S310 (localhost)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def _multipart(files: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = b""
    for name, content in files:
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="files"; '
        head += f'filename="{name}"\r\nContent-Type: image/jpeg\r\n\r\n'
        body += head.encode() + content + b"\r\n"
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _distinct_cells(copies: int) -> list[tuple[str, bytes]]:
    """The demo cells `copies` times, each copy a different file (an upload keeps one of
    identical files): a corner marked, encoded again."""
    files = []
    for n in range(copies):
        for path in SAMPLES:
            with PILImage.open(path) as image:
                rgb = image.convert("RGB")
            for xy in ((x, y) for x in range(6) for y in range(6)):
                rgb.putpixel(xy, (90 * n, 0, 0))  # a corner mark JPEG cannot blur into another
            buffer = io.BytesIO()
            rgb.save(buffer, format="JPEG", quality=95)
            files.append((f"{n}-{path.name}", buffer.getvalue()))
    return files


@pytest.fixture
def services_here() -> Iterator[str]:
    """A database of this test's own on the machine's PostgreSQL, and its Redis database."""
    import psycopg
    import redis

    postgres, broker = urlparse(POSTGRES), urlparse(REDIS_URL)
    require_service("PostgreSQL", postgres.hostname or "127.0.0.1", postgres.port or 5432)
    require_service("Redis", broker.hostname or "127.0.0.1", broker.port or 6379)
    name = f"hv_deploy_{os.getpid()}"
    with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name}")
        admin.execute(f"CREATE DATABASE {name}")
    redis.Redis.from_url(REDIS_URL).flushdb()
    yield name
    with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    redis.Redis.from_url(REDIS_URL).flushdb()


def _command(service: str) -> list[str]:
    return [str(part) for part in SERVICES[service]["command"]]


def _web_command(port: int) -> list[str]:
    web_stage = DOCKERFILE.split("AS web", 1)[1].split("\nFROM ", 1)[0]
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", web_stage, re.MULTILINE).group(1))  # type: ignore[union-attr]
    return [f"127.0.0.1:{port}" if part == "0.0.0.0:8000" else part for part in cmd]


def _collectstatic_env(var_dir: Path) -> dict[str, str]:
    """The web image's build: only the Dockerfile's ENV, and SECRET_KEY=build-only."""
    web_stage = DOCKERFILE.split("AS web", 1)[1].split("\nFROM ", 1)[0]
    assert "SECRET_KEY=build-only python manage.py collectstatic --noinput" in web_stage
    return {
        "PATH": SCRIPTS_PATH,
        "PYTHONPATH": str(ROOT),
        "HEMATOVISION_VAR_DIR": str(var_dir),
        "SECRET_KEY": "build-only",
    }


def test_the_compose_topology_runs_here_and_survives_a_worker_killed_mid_batch(
    tmp_path: Path, services_here: str
) -> None:
    import psycopg

    topology = Topology(tmp_path, services_here)
    python = [sys.executable]
    started = time.monotonic()
    try:
        # The web image's build step, then the one-shot `migrate` service.
        web_var = topology.folder("web")
        topology.run([*python, str(ROOT / "manage.py"), "collectstatic", "--noinput", "-v0"],
                     env=_collectstatic_env(web_var), cwd=ROOT)  # fmt: skip
        assert (web_var / "static" / "staticfiles.json").is_file()
        migrate_env = topology.env("migrate", topology.folder("migrate"))
        migrate = _command("migrate")
        assert migrate[:2] == ["sh", "-c"]
        topology.run(migrate, env=migrate_env, cwd=ROOT)
        topology.run([*python, "manage.py", "create_lab", "Deploy Lab", "--slug", "deploy",
                      "--admin", "deploy.admin"], env=migrate_env, cwd=ROOT)  # fmt: skip
        token = topology.run(
            [*python, "manage.py", "issue_token", "--lab", "deploy", "--username", "lis"],
            env=migrate_env, cwd=ROOT,
        ).strip()  # fmt: skip

        # The long-running services.
        web_env = topology.env("web", web_var)
        assert "DEBUG" not in web_env  # off, as in production
        topology.start("web", _web_command(topology.port), env=web_env, cwd=ROOT)
        for name in ("worker-cpu-1", "worker-cpu-2"):
            folder = topology.folder(name)  # a working folder of its own; media is shared
            command = _command("worker-cpu")
            topology.start(name, [*command, "--hostname", f"{name}@%h"],
                           env=topology.env("worker-cpu", folder), cwd=folder)  # fmt: skip
        adapt = topology.folder("worker-adapt")
        topology.start("worker-adapt", _command("worker-adapt"),
                       env=topology.env("worker-adapt", adapt), cwd=adapt)  # fmt: skip
        beat = topology.folder("beat")
        (beat / "beat").mkdir()
        beat_command = [p.replace(VAR, str(beat)) for p in _command("beat")]
        topology.start("beat", beat_command,
                       env=topology.env("beat", beat), cwd=beat)  # fmt: skip

        # The login page and its static files, with DEBUG off (WhiteNoise, manifest names).
        wait_until(lambda: _http(topology.url("/healthz"))[0] == 200, timeout=120,
                   what="gunicorn")  # fmt: skip
        status, page = _http(topology.url("/login/"))
        assert status == 200
        assets = re.findall(rb'(?:href|src)="(/static/[^"]+)"', page)
        assert assets
        for asset in assets:
            assert _http(topology.url(asset.decode()))[0] == 200, asset
        wait_until(lambda: _http(topology.url("/readyz"))[0] == 200, timeout=180,
                   what="/readyz (a classifying worker's heartbeat)")  # fmt: skip

        # A batch through the API.
        status, body = _http(
            topology.url("/api/v1/cases/"), token=token, content_type="application/json",
            data=json.dumps({"accession_number": "DEPLOY-1"}).encode(),
        )  # fmt: skip
        assert status == 201, body
        case_id = json.loads(body)["id"]
        files = _distinct_cells(3)
        data, content_type = _multipart(files)
        with psycopg.connect(f"{POSTGRES}/{services_here}") as held:
            # Hold every worker's next save (as tests.services.writes_held does), so the
            # batch is certainly mid-way when its worker is killed.
            status, body = _http(topology.url(f"/api/v1/cases/{case_id}/batches/"),
                                 token=token, data=data, content_type=content_type)  # fmt: skip
            assert status == 201, body
            batch_id = json.loads(body)["id"]

            def holder() -> str | None:
                for name in ("worker-cpu-1", "worker-cpu-2"):
                    log = (tmp_path / f"{name}.log").read_text(errors="replace")
                    if "process_batch" in log and "received" in log:
                        return name
                return None

            wait_until(lambda: holder() is not None, timeout=120, what="a worker to take it")

            def saved() -> int:
                row = held.execute(
                    "SELECT count(*) FROM cases_prediction p JOIN cases_cell c ON p.cell_id = c.id"
                    " JOIN cases_image i ON c.image_id = i.id WHERE i.batch_id = %s",
                    (batch_id,),
                ).fetchone()
                held.rollback()
                return int(row[0]) if row else 0

            wait_until(lambda: saved() >= 2, timeout=120, interval=0.1, what="a first chunk")
            held.execute("LOCK TABLE cases_prediction IN EXCLUSIVE MODE")
            processed, total = held.execute(
                "SELECT processed_images, total_images FROM cases_batch WHERE id = %s",
                (batch_id,),
            ).fetchone()  # type: ignore[misc]
            assert processed < total == len(files)
            killed = holder()
            assert killed is not None
            topology.kill(killed)
        # The other worker finishes it once the sweeper sends the stuck batch again.
        survivor = "worker-cpu-2" if killed == "worker-cpu-1" else "worker-cpu-1"

        def finished() -> bool:
            code, raw = _http(topology.url(f"/api/v1/batches/{batch_id}/"), token=token)
            return code == 200 and json.loads(raw)["status"] in {"done", "failed"}

        wait_until(finished, timeout=240, interval=1, what="the batch to finish")
        raw = _http(topology.url(f"/api/v1/batches/{batch_id}/"), token=token)[1]
        assert json.loads(raw)["status"] == "done", raw
        with psycopg.connect(f"{POSTGRES}/{services_here}") as db:
            per_cell = db.execute(
                "SELECT c.id, count(p.id) FROM cases_cell c "
                "JOIN cases_image i ON c.image_id = i.id "
                "LEFT JOIN cases_prediction p ON p.cell_id = c.id "
                "WHERE i.batch_id = %s GROUP BY c.id",
                (batch_id,),
            ).fetchall()
        assert len(per_cell) == len(files)
        assert {count for _, count in per_cell} == {1}
        report_code, report = _http(topology.url(f"/api/v1/batches/{batch_id}/report/"),
                                    token=token)  # fmt: skip
        assert report_code == 200, report
        assert json.loads(report)["total_cells"] == len(files)
        ready_code, ready = _http(topology.url("/readyz"))
        assert ready_code == 200, ready
        assert topology.processes[survivor].poll() is None
        print(f"topology: {time.monotonic() - started:.0f} s; killed {killed} mid-batch")
    except BaseException:
        print(topology.logs())
        raise
    finally:
        topology.stop_all()
