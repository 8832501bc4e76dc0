"""The upload path holds about one decoded copy of an image at a time (bench.upload_memory)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def _measure(uploads: int, pixels: int, *options: str) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "bench.upload_memory", "--uploads", str(uploads),
         "--pixels", str(pixels), *options],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    measured: dict[str, Any] = json.loads(result.stdout)
    return measured


def test_one_upload_of_the_largest_image_holds_about_one_decoded_copy() -> None:
    pixels = 16_000_000  # 4000 x 4000: 46 MB decoded
    measured = _measure(1, pixels)
    assert measured["errors"] == []
    # Before: the EXIF step and the RGB conversion each made a full copy (3 copies at once).
    assert measured["peak_over_before_mb"] < 2 * measured["decoded_mb_each"], measured


def test_an_upload_of_large_images_in_threads_still_decodes_one_at_a_time() -> None:
    pixels = 16_000_000  # over THREADED_MAX_PIXELS: each waits for its turn in the caller
    measured = _measure(1, pixels, "--files", "3", "--threads", "8")
    assert measured["errors"] == []
    assert measured["threads_per_upload"] == 8
    assert measured["peak_over_before_mb"] < 2 * measured["decoded_mb_each"], measured
