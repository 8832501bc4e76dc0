"""What the benchmarks' smoke tests share: 4 demo cells of two classes and a tiny checkpoint."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from ml.testing import make_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "samples" / "demo"


@dataclass(frozen=True)
class TinyBench:
    data: Path  # data/<class>/*.jpg
    model: Path
    env: dict[str, str]  # a subprocess's environment: the repo importable, SQLite


@pytest.fixture
def tiny_bench(tmp_path: Path) -> TinyBench:
    data = tmp_path / "data"
    for name in ("lymphocyte", "neutrophil"):
        (data / name).mkdir(parents=True)
        for image in sorted(DEMO.glob(f"{name}-*.jpg")):
            shutil.copy(image, data / name / image.name)
    model = make_tiny_checkpoint(tmp_path / "tiny.pt", ["lymphocyte", "neutrophil"])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DJANGO_SETTINGS_MODULE": "webportal.settings"}
    env.pop("DATABASE_URL", None)
    return TinyBench(data=data, model=model, env=env)
