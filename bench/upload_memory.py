"""Peak memory of the portal's upload path: `python -m bench.upload_memory [--uploads 8]`.

Each upload is one PNG of the largest size allowed (UPLOAD_MAX_PIXELS, a square), validated,
re-encoded and fitted by the same code as the portal (`webportal.cases.uploads`), `--uploads`
of them at once in threads, as the portal's threads would. Prints the process's resident
memory before and at its peak (VmHWM) as JSON. Runs without Django or a database.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import threading
import zlib
from typing import Any

from PIL import Image

from ml.geometry import eval_geometry
from webportal.cases.uploads import AcceptedImage, UploadLimits, inspect_uploads


def largest_png(pixels: int) -> bytes:
    """A square PNG of `pixels` pixels of a smear's pink, small on disk (it compresses well)."""
    side = math.isqrt(pixels)
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (228, 180, 196)).save(
        buffer, format="PNG", compress_level=zlib.Z_BEST_SPEED
    )
    return buffer.getvalue()


def _status_mb(field: str) -> float:
    """A memory figure of this process from /proc (Linux): VmRSS now, VmHWM its peak.

    Not getrusage's ru_maxrss: Linux keeps that across exec, so a process started from a big
    one would report its parent's peak.
    """
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def measure(*, uploads: int, pixels: int) -> dict[str, Any]:
    data = largest_png(pixels)
    limits = UploadLimits(max_pixels=pixels)
    fit = eval_geometry(192, "crop")
    before = _status_mb("VmRSS")
    errors: list[str] = []

    def upload() -> None:
        results = list(inspect_uploads([("big.png", io.BytesIO(data))], limits=limits, fit=fit))
        if not isinstance(results[0], AcceptedImage):
            errors.append(str(results[0]))

    threads = [threading.Thread(target=upload) for _ in range(uploads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    peak = _status_mb("VmHWM")
    side = math.isqrt(pixels)
    return {
        "uploads": uploads,
        "image": f"{side}x{side} PNG, {len(data)} bytes",
        "decoded_mb_each": round(3 * side * side / 2**20, 1),
        "rss_before_mb": round(before, 1),
        "rss_peak_mb": round(peak, 1),
        "peak_over_before_mb": round(peak - before, 1),
        "rss_after_mb": round(_status_mb("VmRSS"), 1),
        "errors": errors,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uploads", type=int, default=8)
    parser.add_argument("--pixels", type=int, default=UploadLimits().max_pixels)
    args = parser.parse_args(argv)
    print(json.dumps(measure(uploads=args.uploads, pixels=args.pixels), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
