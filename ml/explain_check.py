"""Sanity checks of the Grad-CAM heatmaps (`ml.explain`) on labelled single-cell images.

    python -m ml.explain_check --model ml/weights/pbc8-mobilenetv2.pt \
        --data ../shared/data/pbc/dev --per-class 25 --layers -1 -2 13 6 \
        --randomise 1 3 6 19 --aligned --fuse 6 13 -1 --scales 1 2 --shift 0.25 \
        --json ml/weights/pbc8-mobilenetv2.gradcam-2.json

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
block) is measured in the same passes, so the layer can be chosen on these figures. Options:
--aligned also upsamples every map as the page does (`ml.explain.upsample`, each coarse cell
over the centre of its receptive field; without it, `align_corners=False`, the first round's);
--fuse adds LayerCAM's fusion of some layers; --scales 2 runs the model on the square upscaled
(a finer last map; the model's accuracy there is reported, `right@x2`); --shift F measures
every cell again moved off centre by F of the side (`shifted:` figures), where the centred blob
no longer finds the cell for free.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from scipy import ndimage, stats
from torch import nn

from ml.explain import upsample
from ml.geometry import shift_square
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
    p.add_argument(
        "--aligned",
        action="store_true",
        help="also every map upsampled with ml.explain.upsample(aligned=True) (name +aligned)",
    )
    p.add_argument(
        "--fuse",
        type=int,
        nargs="+",
        help="LayerCAM's fusion of these layers (some of --layers), name layercam@fuse",
    )
    p.add_argument(
        "--scales",
        type=int,
        nargs="+",
        default=[1],
        help="run the model on the input square upscaled this many times as well (name @x2)",
    )
    p.add_argument(
        "--shift",
        type=float,
        default=0.0,
        help="also each cell moved off centre by this fraction of the side (random direction; "
        "the mask moves with it; the edges mirrored): figures under shifted:",
    )
    p.add_argument(
        "--by-class",
        action="store_true",
        help="also the share in the cell box of every map and the blob per class "
        "(class:<label>: figures)",
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


METHODS = ("gradcam", "hirescam", "gradcampp", "gradcam_logp", "layercam")


def coarse_cams(
    model: nn.Module, x: torch.Tensor, class_index: int, layers: Sequence[nn.Module]
) -> tuple[list[dict[str, torch.Tensor]], int]:
    """Each layer's maps at its own resolution (ReLU'd, not upsampled), in one pass, and the
    class the model predicts. Grad-CAM (`ml.explain.grad_cam`: channel weights = mean
    gradient), HiResCAM (Draelos & Carin 2020: gradient times activation, element-wise,
    summed over channels), Grad-CAM++ (Chattopadhay et al. 2018: weights from the positive
    gradients), Grad-CAM of the class's log-probability instead of its logit (`gradcam_logp`:
    the evidence for this class against the others) and LayerCAM (Jiang et al. 2021: the
    positive gradient times the activation, element-wise: usable at early, finer layers)."""
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
            "layercam": (torch.relu(g) * activation).sum(dim=0),
        }
        out.append({name: torch.relu(m) for name, m in maps.items()})
    return out, int(logits[0].argmax())


def grad_cams(
    model: nn.Module,
    x: torch.Tensor,
    class_index: int,
    layers: Sequence[nn.Module],
    *,
    aligned: bool = False,
    size: int | None = None,
) -> list[dict[str, np.ndarray]]:
    """Every method's map of each layer on the `size` square (default: the input's), by
    `ml.explain.upsample` (aligned=False: the page's first upsampling, bilinear with
    align_corners=False). An input larger than `size` (the model run on an upscaled picture)
    is brought back by area averaging."""
    coarse, _ = coarse_cams(model, x, class_index, layers)
    return [to_square(by_method, x.shape[-1], size, aligned=aligned) for by_method in coarse]


def to_square(
    by_method: dict[str, torch.Tensor], input_size: int, size: int | None, *, aligned: bool
) -> dict[str, np.ndarray]:
    out = {}
    for name, m in by_method.items():
        full = upsample(m, input_size, aligned=aligned)
        if size is not None and size != input_size:
            full = nn.functional.adaptive_avg_pool2d(full[None, None], size)[0, 0]
        out[name] = full.numpy()
    return out


def fused(maps: Sequence[np.ndarray]) -> np.ndarray:
    """LayerCAM's fusion of layers (Jiang et al. 2021, section 3.3): each map scaled to
    [0, 1] and through tanh(2 m) (which lifts the weak maps of early layers), then summed."""
    total = np.zeros_like(maps[0])
    for m in maps:
        peak = float(m.max())
        if peak > 0:
            total += np.tanh(2 * m / peak)
    return total


def random_offset(size: int, fraction: float, rng: np.random.Generator) -> tuple[int, int]:
    """(dy, dx) of length `fraction` of the side, in a random direction."""
    angle = rng.uniform(0, 2 * np.pi)
    radius = fraction * size
    return round(radius * np.sin(angle)), round(radius * np.cos(angle))


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


def variant_maps(
    model: nn.Module,
    picture: Image.Image,
    clf: Classifier,
    target: int,
    layers: Sequence[nn.Module],
    args: argparse.Namespace,
) -> tuple[dict[str, np.ndarray], dict[int, bool]]:
    """Every measured map of one picture by name (method@layer[+aligned][@xS]) on the input
    square, and whether the model's class was right at each scale."""
    size = clf.input_size
    maps: dict[str, np.ndarray] = {}
    right: dict[int, bool] = {}
    for scale in args.scales:
        seen = (
            picture
            if scale == 1
            else picture.resize((size * scale,) * 2, Image.Resampling.BILINEAR)
        )
        coarse, predicted = coarse_cams(model, clf.to_input(seen)[None], target, layers)
        right[scale] = predicted == target
        suffix = "" if scale == 1 else f"@x{scale}"
        for aligned in (False, True) if args.aligned else (False,):
            upsampled = [to_square(c, size * scale, size, aligned=aligned) for c in coarse]
            tag = ("+aligned" if aligned else "") + suffix
            for i, by_method in zip(args.layers, upsampled, strict=True):
                for m, cam in by_method.items():
                    maps[f"{m}@{i}{tag}"] = cam
            if args.fuse:
                maps[f"layercam@fuse{tag}"] = fused([maps[f"layercam@{i}{tag}"] for i in args.fuse])
    return maps, right


def main(args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.time()
    torch.set_num_threads(args.threads)
    clf = Classifier.load(args.model, device="cpu", accelerate=False)
    ckpt = torch.load(args.model, map_location="cpu", weights_only=True)
    _, val = model_split(args, dict(ckpt.get("recipe", {})))
    cells = fit_subset(val, args.per_class, args.seed)
    model = clf.eager
    layers = [blocks_of(model)[i] for i in args.layers]
    shuffled = {b: randomised(model, b, args.seed) for b in args.randomise}
    size = clf.input_size
    blob = centred_blob(size)
    rng = np.random.default_rng(args.seed)
    placements = ["", "shifted:"] if args.shift else [""]
    rows: dict[str, list[float | None]] = defaultdict(list)
    no_nucleus: dict[str, int] = {}
    for cell in cells:
        picture = clf.fit_to_input(cell.open())
        masks = cell_masks(picture)
        if masks is None:
            no_nucleus[cell.label] = no_nucleus.get(cell.label, 0) + 1
            continue
        target = clf.classes.index(cell.label)
        dy, dx = random_offset(size, args.shift, rng)
        for place in placements:
            if place:
                rgb = shift_square(np.asarray(picture), dy, dx, reflect=True)
                seen = Image.fromarray(rgb)
                nucleus, box = (shift_square(m, dy, dx, reflect=False) for m in masks)
            else:
                seen, (nucleus, box) = picture, masks
            maps, right = variant_maps(model, seen, clf, target, layers, args)
            rows[f"{place}box_area"].append(float(box.mean()))
            rows[f"{place}blob_in_box"].append(share_inside(blob, box))
            by_class = f"class:{cell.label}:{place}" if args.by_class else None
            if by_class:
                rows[f"{by_class}blob_in_box"].append(share_inside(blob, box))
            for scale, ok in right.items():
                rows[f"{place}right@x{scale}"].append(float(ok))
            for name, cam in maps.items():
                rows[f"{place}{name}_in_box"].append(share_inside(cam, box))
                if by_class:
                    rows[f"{by_class}{name}_in_box"].append(share_inside(cam, box))
                rows[f"{place}{name}_in_nucleus"].append(share_inside(cam, nucleus))
            if place:
                continue
            for b, other in shuffled.items():
                other_layers = [blocks_of(other)[i] for i in args.layers]
                rand, _ = variant_maps(other, seen, clf, target, other_layers, args)
                for name, cam in maps.items():
                    rows[f"{name}_rand{b}_spearman"].append(spearman(cam, rand[name]))
    report: dict[str, Any] = {
        "model": str(args.model),
        "cells": len(cells),
        "scored": len(rows["box_area"]),
        "no_nucleus_found": no_nucleus,
        "figures": {k: summary(v) for k, v in rows.items()},
        "seconds": round(time.time() - t0, 1),
        "command": " ".join(["python -m ml.explain_check", *command_args(args)]),
    }
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    for k, v in report["figures"].items():
        print(f"{k:<40} {v}")
    return report


def command_args(args: argparse.Namespace) -> list[str]:
    out = [f"--model {args.model}", f"--data {args.data}", f"--per-class {args.per_class}"]
    out.append("--layers " + " ".join(map(str, args.layers)))
    out.append("--randomise " + " ".join(map(str, args.randomise)))
    if args.aligned:
        out.append("--aligned")
    if args.fuse:
        out.append("--fuse " + " ".join(map(str, args.fuse)))
    if args.scales != [1]:
        out.append("--scales " + " ".join(map(str, args.scales)))
    if args.shift:
        out.append(f"--shift {args.shift}")
    if args.by_class:
        out.append("--by-class")
    for extra in args.extra_train or []:
        out.append(f"--extra-train {extra}")
    out.append(f"--seed {args.seed}")
    return out


if __name__ == "__main__":
    main(get_args_parser().parse_args())
