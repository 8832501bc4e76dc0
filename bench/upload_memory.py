"""Peak memory of the portal's upload path: `python -m bench.upload_memory [--uploads 8]`.

    python -m bench.upload_memory --uploads 8 [--files 4] [--threads 8] [--pixels 2000000]

Each upload is `--files` PNGs (default one) of the largest size allowed (UPLOAD_MAX_PIXELS, a
square; `--pixels` another size), validated, re-encoded and fitted by the same code as the
portal (`webportal.cases.uploads`), each upload inspected with `--threads` threads (the
portal's UPLOAD_THREADS), `--uploads` of them at once in threads, as the portal's request
threads would. Prints the process's resident memory before and at its peak (VmHWM) as JSON.
Runs without Django or a database.
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


def largest_png(pixels: int, shade: int = 0) -> bytes:
    """A square PNG of `pixels` pixels of a smear's pink, small on disk (it compresses well);
    each `shade` gives other bytes (an upload's copies of one file would be duplicates)."""
    side = math.isqrt(pixels)
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (228, 180, shade % 256)).save(
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


def measure(*, uploads: int, pixels: int, files: int = 1, threads: int = 1) -> dict[str, Any]:
    datas = [largest_png(pixels, shade) for shade in range(files)]
    limits = UploadLimits(max_pixels=pixels)
    fit = eval_geometry(192, "crop")
    before = _status_mb("VmRSS")
    errors: list[str] = []

    def upload() -> None:
        named = [(f"big-{n}.png", io.BytesIO(data)) for n, data in enumerate(datas)]
        for result in inspect_uploads(named, limits=limits, fit=fit, threads=threads):
            if not isinstance(result, AcceptedImage):
                errors.append(str(result))

    requests = [threading.Thread(target=upload) for _ in range(uploads)]
    for request in requests:
        request.start()
    for request in requests:
        request.join()
    peak = _status_mb("VmHWM")
    side = math.isqrt(pixels)
    return {
        "uploads": uploads,
        "files_per_upload": files,
        "threads_per_upload": threads,
        "image": f"{side}x{side} PNG, {len(datas[0])} bytes",
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
    parser.add_argument("--files", type=int, default=1, help="images in each upload")
    parser.add_argument("--threads", type=int, default=1, help="each upload's UPLOAD_THREADS")
    args = parser.parse_args(argv)
    figures = measure(
        uploads=args.uploads, pixels=args.pixels, files=args.files, threads=args.threads
    )
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
