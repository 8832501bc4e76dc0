"""Packaging by role: `pip install .` is the portal alone, with no PyTorch, and it serves pages.

Slow (a fresh virtualenv, a pip install from the registries or pip's cache, about a minute
or two); CI runs it with the rest of the suite (`make test`).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.services import free_port

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 (localhost)
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_a_fresh_pip_install_has_no_torch_and_serves_the_login_page(tmp_path: Path) -> None:
    # From a clean copy of the tracked files: setuptools reuses an in-tree build/ folder, whose
    # stale modules (a migration since renamed) would be installed with the new ones.
    source = tmp_path / "source"
    tracked = (
        subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True)
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, tracked):
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", str(source)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]

    # Not installed at all, not merely not imported.
    missing = subprocess.run(
        [str(python), "-c", "import importlib.util as u; "
         "print([m for m in ('torch', 'torchvision', 'onnxruntime', 'matplotlib', 'tqdm') "
         "if u.find_spec(m)])"],
        cwd=tmp_path, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert missing.stdout.strip() == "[]"

    # A deployment's settings (DEBUG off), run outside the source tree so only the installed
    # package is importable.
    port = free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DJANGO_SETTINGS_MODULE", "PYTHONPATH", "DATABASE_URL"}
    }
    env.update(
        DJANGO_SETTINGS_MODULE="webportal.settings",
        SECRET_KEY="packaging-test-secret-key-not-used-anywhere-else-0123456789",
        ALLOWED_HOSTS="127.0.0.1",
        SECURE_SSL_REDIRECT="false",
        HEMATOVISION_VAR_DIR=str(tmp_path / "var"),
        DEBUG="false",
    )
    for command in (["migrate", "--noinput"], ["collectstatic", "--noinput"]):
        done = subprocess.run(
            [str(python), "-m", "django", *command, "-v0"],
            cwd=tmp_path, env=env, capture_output=True, text=True,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
    server = subprocess.Popen(
        [str(venv / "bin" / "gunicorn"), "webportal.wsgi", "--bind", f"127.0.0.1:{port}",
         "--workers", "1"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        status, page = 0, b""
        while time.monotonic() < deadline:
            try:
                status, page = _get(f"http://127.0.0.1:{port}/login/")
                break
            except OSError:
                time.sleep(0.5)
        assert status == 200, page[:2000]
        assert b'name="password"' in page
        stylesheet = re.search(rb'href="(/static/[^"]+\.css)"', page)
        assert stylesheet is not None
        assert _get(f"http://127.0.0.1:{port}{stylesheet.group(1).decode()}")[0] == 200
        imported = subprocess.run(
            [str(python), "-c", "import sys, django; django.setup(); import webportal.urls; "
             "print(sorted(m for m in sys.modules if m.split('.')[0] in "
             "{'torch', 'torchvision', 'onnxruntime'}))"],
            cwd=tmp_path, env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert imported.stdout.strip().splitlines()[-1] == "[]"
    finally:
        server.terminate()
        server.wait(timeout=30)
