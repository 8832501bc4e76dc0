"""The direction of imports beyond what the import-linter contracts express.

`lint-imports` (pyproject.toml) checks the layers, forbidden imports and cycles among the
modules of each package; this checks cycles across packages too, module by module, and that the
portal's process really runs without PyTorch.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import grimp

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("webportal", "workers", "ml", "bench")


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return groups


def test_no_module_imports_itself_back_through_others() -> None:
    graph = grimp.build_graph(*PACKAGES)
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = grimp.ImportGraph()
    for importer, imported in [("a.x", "a.y"), ("a.y", "b.z"), ("b.z", "a.x"), ("b.z", "b.w")]:
        graph.add_import(importer=importer, imported=imported)
    assert _cycles(graph) == [["a.x", "a.y", "b.z"]]


def test_the_portal_process_serves_and_fits_uploads_without_pytorch() -> None:
    script = """
import sys
import django
django.setup()
from django.core.wsgi import get_wsgi_application
from django.test import Client
from PIL import Image
import webportal.urls
from webportal.cases import services
from ml.geometry import eval_geometry
application = get_wsgi_application()
assert Client(HTTP_HOST="localhost").get("/login/").status_code == 200
fitted = eval_geometry(24, "stain")(Image.new("RGB", (60, 40), (120, 40, 200)))
assert fitted.size == (24, 24)
loaded = sorted(name for name in sys.modules if name.split(".")[0] in {"torch", "torchvision"})
print(",".join(loaded))
"""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def _contract(name_starts: str) -> dict[str, Any]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    contracts = config["tool"]["importlinter"]["contracts"]
    return next(c for c in contracts if c["name"].startswith(name_starts))


def test_the_pytorch_contract_names_every_part_of_the_portal_but_the_pipeline() -> None:
    contract = _contract("PyTorch behind one door")
    portal = ROOT / "webportal"
    parts = {
        f"webportal.{path.stem}"
        for path in portal.iterdir()
        if (path.suffix == ".py" and path.stem != "__init__")
        or (path.is_dir() and (path / "__init__.py").exists())
    }
    assert set(contract["source_modules"]) == parts - {"webportal.pipeline"}


def _lint_copy(tmp_path: Path, injected: dict[str, str]) -> str:
    """lint-imports on a copy of the sources with `injected` lines added to the top of some
    modules (path -> line); the report it prints."""
    for package in (*PACKAGES, "tests"):
        shutil.copytree(
            ROOT / package,
            tmp_path / package,
            ignore=shutil.ignore_patterns("weights", "templates", "static", "__pycache__"),
        )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    for relative, line in injected.items():
        module = tmp_path / relative
        module.write_text(f"{line}\n{module.read_text()}")
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(lint), "--no-cache"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0, result.stdout
    return result.stdout


def test_the_contracts_fail_on_an_upward_import_a_cycle_and_pytorch_outside_the_pipeline(
    tmp_path: Path,
) -> None:
    report = _lint_copy(
        tmp_path,
        {
            # upward: core (the bottom) imports an app
            "webportal/core/labels.py": "import webportal.cases.models  # noqa",
            # a cycle between layers: celery <- logs
            "webportal/logs.py": "import webportal.celery  # noqa",
            # PyTorch reached from an app, through a torch-side ml module
            "webportal/quality/selectors.py": "import ml.inference  # noqa",
        },
    )
    flat = " ".join(report.split())
    assert "-> audit -> core BROKEN" in flat  # the layers contract
    assert "webportal.core.labels -> webportal.cases.models" in flat
    assert "webportal.logs -> webportal.celery" in flat
    assert "webportal.quality.selectors -> ml.inference" in flat
    assert "PyTorch behind one door: only webportal.pipeline reaches torch-side code BROKEN" in flat
