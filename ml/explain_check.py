"""Sanity checks of the Grad-CAM heatmaps (`ml.explain`) on labelled single-cell images.

    python -m ml.explain_check --model ml/weights/pbc8-mobilenetv2.pt \
        --data ../shared/data/pbc/dev --per-class 25 --json ml/weights/pbc8-mobilenetv2.gradcam.json

On the model's own val split (rebuilt from its recipe, as `ml.guard` does), at most
--per-class cells a class:

1. **Mass inside the white cell.** The cell's mask is `ml.locate`'s segmentation of the picture
   as the model sees it (the input square): the nucleus pixels (stain score above the
   locator's threshold, opened, the largest piece and the pieces within its join distance),
   and the locator's cell box around them (`box_scale` times the nucleus box). The share of
   the heatmap's mass inside the box is compared with two baselines that do not look at the
   image: a centred Gaussian blob (sigma = a sixth of the side) and a flat map (the box's
   share of the area). Cells with no nucleus found (most platelets) are counted apart.
2. **Randomised weights** (Adebayo et al. 2018, "Sanity checks for saliency maps", cascading
   randomisation): the classifier and then the top blocks of `features` are re-initialised
   from the top down, and the heatmap recomputed; its Spearman rank correlation with the
   trained model's heatmap should fall towards 0 (a map that stays the same does not depend
   on what the model learnt).

Every candidate layer (--layers, indices of `features`; -1 is `ml.explain`'s default, the last
block) is measured in the same passes, so the layer can be chosen on these figures.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from scipy import ndimage, stats
from torch import nn

from ml.guard import fit_subset, model_split
from ml.inference import Classifier
from ml.locate import DEFAULT_PARAMS, stain_score


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True, help="the model's --data folder")
    p.add_argument("--extra-train", action="append", help="as ml.guard's")
    p.add_argument("--per-class", type=int, default=25)
    p.add_argument("--layers", type=int, nargs="+", default=[-1, -2, -5, 13])
    p.add_argument(
        "--randomise",
        type=int,
        nargs="+",
        default=[1, 3, 6],
        help="cascading randomisation: the classifier plus this many top blocks of features",
    )
    p.add_argument("--json")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    return p


def cell_masks(picture: Image.Image) -> tuple[np.ndarray, np.ndarray] | None:
    """(nucleus mask, cell box mask) of the input square, by `ml.locate`'s rule at full
    resolution; None when no nucleus is found."""
    rgb = np.asarray(picture.convert("RGB"), dtype=np.float32)
    mask = ndimage.binary_opening(stain_score(rgb) > DEFAULT_PARAMS.stain_threshold)
    pieces, count = ndimage.label(mask)
    if count == 0:
        return None
    areas = np.bincount(pieces.ravel(), minlength=count + 1)
    areas[0] = 0
    biggest = int(areas.argmax())
    if areas[biggest] < 0.01 * mask.size:
        return None
    # Lobes: pieces within the join distance (scaled to this picture: a PBC crop is about
    # three times BCCD's magnification, a 192-px square about half a 360-px crop) of the
    # largest piece belong to it.
    near = ndimage.binary_dilation(pieces == biggest, iterations=8)
    keep = np.unique(pieces[near & (pieces > 0)])
    nucleus = ndimage.binary_fill_holes(np.isin(pieces, keep))
    ys, xs = np.nonzero(nucleus)
    cy, cx = (ys.min() + ys.max() + 1) / 2, (xs.min() + xs.max() + 1) / 2
    half_h = (ys.max() + 1 - ys.min()) * DEFAULT_PARAMS.box_scale / 2
    half_w = (xs.max() + 1 - xs.min()) * DEFAULT_PARAMS.box_scale / 2
    box = np.zeros_like(nucleus)
    box[
        max(0, round(cy - half_h)) : round(cy + half_h),
        max(0, round(cx - half_w)) : round(cx + half_w),
    ] = True
    return nucleus, box


METHODS = ("gradcam", "hirescam", "gradcampp", "gradcam_logp")


def grad_cams(
    model: nn.Module, x: torch.Tensor, class_index: int, layers: Sequence[nn.Module]
) -> list[dict[str, np.ndarray]]:
    """Unnormalised maps of each layer, in one pass: Grad-CAM (`ml.explain.grad_cam`: channel
    weights = mean gradient), HiResCAM (Draelos & Carin 2020: gradient times activation,
    element-wise, summed over channels) and Grad-CAM++ (Chattopadhay et al. 2018: weights
    from the positive gradients), and Grad-CAM of the class's log-probability instead of its
    logit (`gradcam_logp`: the evidence for this class against the others)."""
    stored: dict[int, torch.Tensor] = {}
    handles = [
        layer.register_forward_hook(lambda _m, _i, out, k=k: stored.__setitem__(k, out))
        for k, layer in enumerate(layers)
    ]
    try:
        with torch.enable_grad():
            logits = model(x.detach().clone().requires_grad_(True))
            acts = [stored[k] for k in range(len(layers))]
            grads = torch.autograd.grad(logits[0, class_index], acts, retain_graph=True)
            logp_grads = torch.autograd.grad(torch.log_softmax(logits, dim=1)[0, class_index], acts)
    finally:
        for h in handles:
            h.remove()
    out = []
    for k, (gradient, logp_gradient) in enumerate(zip(grads, logp_grads, strict=True)):
        activation, g = stored[k].detach()[0], gradient[0]
        gl = logp_gradient[0]
        g2, g3 = g.pow(2), g.pow(3)
        denom = 2 * g2 + (activation.sum(dim=(1, 2)) * g3.permute(1, 2, 0)).permute(2, 0, 1)
        alpha = g2 / torch.where(denom != 0, denom, torch.ones_like(denom))
        maps = {
            "gradcam": (g.mean(dim=(1, 2))[:, None, None] * activation).sum(dim=0),
            "hirescam": (g * activation).sum(dim=0),
            "gradcam_logp": (gl.mean(dim=(1, 2))[:, None, None] * activation).sum(dim=0),
            "gradcampp": ((alpha * torch.relu(g)).sum(dim=(1, 2))[:, None, None] * activation).sum(
                dim=0
            ),
        }
        out.append(
            {
                name: nn.functional.interpolate(
                    torch.relu(m)[None, None],
                    size=x.shape[-2:],
                    mode="bilinear",
                    align_corners=False,
                )[0, 0].numpy()
                for name, m in maps.items()
            }
        )
    return out


def share_inside(cam: np.ndarray, mask: np.ndarray) -> float | None:
    total = float(cam.sum())
    return float(cam[mask].sum()) / total if total > 0 else None


def centred_blob(size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] - (size - 1) / 2
    sigma = size / 6
    return np.asarray(np.exp(-(xx**2 + yy**2) / (2 * sigma**2)))


def blocks_of(model: nn.Module) -> nn.Sequential:
    """The model's `features` (MobileNetV2, EfficientNet-Lite0: a Sequential of blocks)."""
    features = model.get_submodule("features")
    if not isinstance(features, nn.Sequential):
        raise ValueError("the model has no Sequential `features` to explain")
    return features


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation of two maps on a 24 x 24 grid (block means)."""

    def small(m: np.ndarray) -> np.ndarray:
        s = m.shape[0] // 24
        return np.asarray(m[: s * 24, : s * 24].reshape(24, s, 24, s).mean(axis=(1, 3)).ravel())

    rho = stats.spearmanr(small(a), small(b)).statistic
    return float(rho) if np.isfinite(rho) else 0.0


def randomised(model: nn.Module, blocks: int, seed: int) -> nn.Module:
    """A copy with the classifier and the top `blocks` blocks of features re-initialised."""
    out = copy.deepcopy(model)
    torch.manual_seed(seed)
    features = blocks_of(out)
    parts = [out.get_submodule("classifier"), *list(features)[len(features) - blocks :]]
    for part in parts:
        for m in part.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.normal_(m.weight, std=0.05)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()
                m.reset_running_stats()
    return out.eval()


def summary(values: Sequence[float | None]) -> dict[str, Any]:
    got = np.array([v for v in values if v is not None], dtype=float)
    if not len(got):
        return {"n": 0}
    return {
        "n": len(got),
        "mean": float(got.mean()),
        "median": float(np.median(got)),
        "p10": float(np.percentile(got, 10)),
    }


def main(args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.time()
    torch.set_num_threads(args.threads)
    clf = Classifier.load(args.model, device="cpu", accelerate=False)
    ckpt = torch.load(args.model, map_location="cpu", weights_only=True)
    _, val = model_split(args, dict(ckpt.get("recipe", {})))
    cells = fit_subset(val, args.per_class, args.seed)
    model = clf.eager
    features = blocks_of(model)
    layers = [features[i] for i in args.layers]
    shuffled = {b: randomised(model, b, args.seed) for b in args.randomise}
    blob = centred_blob(clf.input_size)
    rows: dict[str, list[float | None]] = {"box_area": [], "blob_in_box": []}
    for i in args.layers:
        for m in METHODS:
            rows[f"{m}@{i}_in_box"] = []
            rows[f"{m}@{i}_in_nucleus"] = []
            for b in args.randomise:
                rows[f"{m}@{i}_rand{b}_spearman"] = []
    no_nucleus: dict[str, int] = {}
    for cell in cells:
        picture = clf.fit_to_input(cell.open())
        masks = cell_masks(picture)
        if masks is None:
            no_nucleus[cell.label] = no_nucleus.get(cell.label, 0) + 1
            continue
        nucleus, box = masks
        x = clf.to_input(picture)[None]
        target = clf.classes.index(cell.label)
        cams = grad_cams(model, x, target, layers)
        rows["box_area"].append(float(box.mean()))
        rows["blob_in_box"].append(share_inside(blob, box))
        for i, by_method in zip(args.layers, cams, strict=True):
            for m, cam in by_method.items():
                rows[f"{m}@{i}_in_box"].append(share_inside(cam, box))
                rows[f"{m}@{i}_in_nucleus"].append(share_inside(cam, nucleus))
        for b, other in shuffled.items():
            other_layers = [blocks_of(other)[i] for i in args.layers]
            for i, by_method, rand in zip(
                args.layers, cams, grad_cams(other, x, target, other_layers), strict=True
            ):
                for m, cam in by_method.items():
                    rows[f"{m}@{i}_rand{b}_spearman"].append(spearman(cam, rand[m]))
    report: dict[str, Any] = {
        "model": str(args.model),
        "cells": len(cells),
        "scored": len(rows["box_area"]),
        "no_nucleus_found": no_nucleus,
        "figures": {k: summary(v) for k, v in rows.items()},
        "seconds": round(time.time() - t0, 1),
        "command": (
            f"python -m ml.explain_check --model {args.model} --data {args.data} "
            f"--per-class {args.per_class} --layers {' '.join(map(str, args.layers))} "
            f"--randomise {' '.join(map(str, args.randomise))} --seed {args.seed}"
        ),
    }
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    for k, v in report["figures"].items():
        print(f"{k:<28} {v}")
    return report


if __name__ == "__main__":
    main(get_args_parser().parse_args())
