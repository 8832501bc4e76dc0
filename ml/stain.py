"""Reinhard stain normalisation (Reinhard et al. 2001): each pixel's colour moved in
l-alpha-beta space so that pictures with a lab's pooled per-channel mean and standard deviation
get the training stain's.

One piece of code for everything that normalises: `ml.adapt` (the study's and the portal's
adaptation) and `ml.inference.Classifier` (an adapted checkpoint's `stain_source` and
`stain_target`). The statistics are pooled over many of the lab's pictures, not taken per
picture: a per-picture mapping would wash out the colour of an eosinophil's granules, which is
what tells it apart; and a fixed mapping keeps a cell's prediction independent of its batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

# Reinhard et al. (2001): RGB -> LMS cone space, log10, then Ruderman's decorrelated l-alpha-beta.
_LMS_FROM_RGB = np.array(
    [[0.3811, 0.5783, 0.0402], [0.1967, 0.7244, 0.0782], [0.0241, 0.1288, 0.8444]]
)
_LAB_FROM_LOGLMS = np.diag([1 / math.sqrt(3), 1 / math.sqrt(6), 1 / math.sqrt(2)]) @ np.array(
    [[1.0, 1.0, 1.0], [1.0, 1.0, -2.0], [1.0, -1.0, 0.0]]
)
_RGB_FROM_LMS = np.linalg.inv(_LMS_FROM_RGB)
_LOGLMS_FROM_LAB = np.linalg.inv(_LAB_FROM_LOGLMS)
LAB_LIMIT = 5.0
# Statistics are taken on a thumbnail: colour statistics need no detail, and it is 50x cheaper.
STATS_SIDE = 64


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """H x W x 3 uint8 (or float 0-255) RGB -> l-alpha-beta (float64)."""
    a = np.clip(np.asarray(rgb, dtype=np.float64), 1.0, 255.0) / 255.0  # log of 0 is undefined
    lms = np.clip(a @ _LMS_FROM_RGB.T, 1e-6, None)
    lab: np.ndarray = np.log10(lms) @ _LAB_FROM_LOGLMS.T
    return lab


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """l-alpha-beta -> H x W x 3 uint8 RGB (clipped)."""
    lms = np.power(10.0, lab @ _LOGLMS_FROM_LAB.T)
    rgb = lms @ _RGB_FROM_LMS.T * 255.0
    out: np.ndarray = np.clip(rgb, 0, 255).round().astype(np.uint8)
    return out


@dataclass(frozen=True)
class StainStats:
    """Per-channel mean and standard deviation in l-alpha-beta of a set of pictures."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def of(cls, images: Iterable[Image.Image]) -> StainStats:
        """Pooled over every pixel of every picture (each shrunk to a thumbnail first)."""
        pixels = []
        for img in images:
            small = img.convert("RGB")
            small.thumbnail((STATS_SIDE, STATS_SIDE), Image.Resampling.BILINEAR)
            pixels.append(rgb_to_lab(np.asarray(small)).reshape(-1, 3))
        if not pixels:
            raise ValueError("no picture to take stain statistics of")
        lab = np.concatenate(pixels)
        m, s = lab.mean(0), lab.std(0)
        return cls(
            mean=(float(m[0]), float(m[1]), float(m[2])),
            std=(float(s[0]), float(s[1]), float(s[2])),
        )

    @classmethod
    def from_dict(cls, d: Mapping[str, Sequence[float]]) -> StainStats:
        """The inverse of to_dict (a checkpoint's `stain_source` / `stain_target`)."""
        mean, std = [float(v) for v in d["mean"]], [float(v) for v in d["std"]]
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"stain statistics need 3 means and 3 deviations, not {dict(d)}")
        return cls(mean=(mean[0], mean[1], mean[2]), std=(std[0], std[1], std[2]))

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "std": list(self.std)}


def reinhard(img: Image.Image, *, source: StainStats, target: StainStats) -> Image.Image:
    """img's colours moved so that pictures with `source` statistics get `target`'s."""
    lab = rgb_to_lab(np.asarray(img.convert("RGB")))
    src_m, src_s = np.array(source.mean), np.maximum(np.array(source.std), 1e-6)
    mapped = (lab - src_m) / src_s * np.array(target.std) + np.array(target.mean)
    # A lab whose pictures hardly vary (a flat source std) would send colours to infinity and
    # NaN; no real colour is beyond +-5 in this space (10^5 times white), so the clip leaves
    # every ordinary mapping as it is.
    return Image.fromarray(lab_to_rgb(np.clip(mapped, -LAB_LIMIT, LAB_LIMIT)))
