"""Stored bytes per uploaded byte: `python -m bench.upload_amplification [--images 1000]`.

One ZIP of `--images` PNGs that are small on disk and large in pixels (a flat colour of
`--side` x `--side`: PNG compresses it to almost nothing, then ZIP again), passed through the
portal's upload path (`webportal.cases.uploads.inspect_uploads`, fitting each cell to the
model's input as the portal does). What the portal would store per accepted image is the
re-encoded PNG plus the fitted copy (an uncompressed BMP); the figure is their sum over the
ZIP's size. Run twice: with the upload budget (the defaults of UPLOAD_MAX_FILES and
UPLOAD_MAX_TOTAL_PIXELS) and without it (the limits before issue 21). Prints JSON. Runs
without Django or a database.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
import zipfile
from typing import Any

from PIL import Image

from ml.geometry import eval_geometry
from webportal.cases.uploads import AcceptedImage, UploadLimits, inspect_uploads


def flat_png_zip(*, images: int, side: int) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for number in range(images):
            png = io.BytesIO()
            # One shade per image, so no two are duplicates (the upload refuses those).
            shade = (number % 250, (number // 250) % 250, 200)
            Image.new("RGB", (side, side), shade).save(png, format="PNG", optimize=True)
            zf.writestr(f"cell-{number:05d}.png", png.getvalue())
    return out.getvalue()


def measure(*, data: bytes, limits: UploadLimits) -> dict[str, Any]:
    fit = eval_geometry(192, "crop")
    started = time.perf_counter()
    stored = accepted = refused = 0
    for result in inspect_uploads([("cells.zip", io.BytesIO(data))], limits=limits, fit=fit):
        if isinstance(result, AcceptedImage):
            accepted += 1
            stored += len(result.content) + len(result.model_input or b"")
        else:
            refused += 1
    return {
        "uploaded_bytes": len(data),
        "accepted": accepted,
        "refused": refused,
        "stored_bytes": stored,
        "amplification": round(stored / len(data), 1),
        "seconds": round(time.perf_counter() - started, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--side", type=int, default=1024)
    parser.add_argument("--max-images", type=int, default=UploadLimits().max_images)
    parser.add_argument("--max-upload-pixels", type=int, default=UploadLimits().max_upload_pixels)
    args = parser.parse_args(argv)
    data = flat_png_zip(images=args.images, side=args.side)
    unlimited = UploadLimits(max_images=10**9, max_upload_pixels=10**15)
    budget = UploadLimits(max_images=args.max_images, max_upload_pixels=args.max_upload_pixels)
    report = {
        "images": args.images,
        "side": args.side,
        "without_budget": measure(data=data, limits=unlimited),
        "with_budget": {
            "max_images": args.max_images,
            "max_upload_pixels": args.max_upload_pixels,
            **measure(data=data, limits=budget),
        },
    }
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
