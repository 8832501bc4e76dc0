"""Grad-CAM: where the model looked for a class (Selvaraju et al., 2017), in pure PyTorch.

The activations of the last convolutional block are weighted by the mean gradient of the
class score over each channel; the positive part, upsampled to the input with each coarse
cell over the pixels it was computed from (`upsample`), is the heatmap. Its sanity checks
(mass inside the white cell, centred and moved off centre; randomised weights) are
`ml.explain_check`'s, figures in docs/MODELS.md.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image
from torch import nn

from ml.inference import Classifier


def last_conv_block(model: nn.Module) -> nn.Module:
    """The module whose output Grad-CAM uses: the last block of `features` for the
    MobileNet/EfficientNet/VGG layout, else the last Conv2d."""
    features = getattr(model, "features", None)
    if isinstance(features, nn.Sequential) and len(features):
        return features[-1]
    last: nn.Module | None = None
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            last = module
    if last is None:
        raise ValueError("the model has no convolution to explain")
    return last


def upsample(cam: torch.Tensor, size: int, *, aligned: bool = True) -> torch.Tensor:
    """An n x n map on the `size` x `size` input square, bilinear.

    aligned=True puts coarse cell j at input pixel s * j (s = size / n), where the receptive
    field of a stack of stride-2 convolutions padded by kernel // 2 (MobileNetV2's, checked by
    a test) is centred; beyond the last cell the map is held flat. aligned=False is
    `interpolate(align_corners=False)`, which puts cell j at s * j + (s - 1) / 2: half a cell
    (15.5 px at MobileNetV2's last block on a 192 square) down and to the right of where the
    model looked.
    """
    n = cam.shape[-1]
    if not aligned or size % n or n == 1:
        return nn.functional.interpolate(
            cam[None, None], size=(size, size), mode="bilinear", align_corners=False
        )[0, 0]
    stride = size // n
    inner = nn.functional.interpolate(
        cam[None, None], size=((n - 1) * stride + 1,) * 2, mode="bilinear", align_corners=True
    )
    return nn.functional.pad(inner, (0, stride - 1, 0, stride - 1), mode="replicate")[0, 0]


def grad_cam(
    model: nn.Module,
    x: torch.Tensor,
    class_index: int,
    layer: nn.Module | None = None,
    *,
    aligned: bool = True,
) -> torch.Tensor:
    """The H x W heatmap in [0, 1] for class `class_index` of a 1 x 3 x H x W input (square),
    upsampled by `upsample` (aligned: each coarse cell over the pixels it was computed from)."""
    layer = layer or last_conv_block(model)
    stored: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, output: stored.append(output))
    try:
        with torch.enable_grad():
            # The input needs a gradient so the graph exists even when the weights are frozen;
            # autograd.grad leaves the parameters' .grad untouched.
            logits = model(x.detach().clone().requires_grad_(True))
            (gradient,) = torch.autograd.grad(logits[0, class_index], stored[-1])
    finally:
        handle.remove()
    activation = stored[-1].detach()[0]
    weights = gradient[0].mean(dim=(1, 2))
    cam = torch.relu((weights[:, None, None] * activation).sum(dim=0))
    cam = upsample(cam, x.shape[-1], aligned=aligned)
    cam -= cam.min()
    peak = cam.max()
    return cam / peak if peak > 0 else cam


def overlay(image: Image.Image, cam: torch.Tensor, *, alpha: float = 0.45) -> Image.Image:
    """The heatmap over the image (both the model's input size), blue (cold) to red (hot)."""
    heat = cam.cpu().numpy()
    colours = np.stack(
        [np.clip(1.5 * heat, 0, 1), np.clip(1.5 - np.abs(2 * heat - 1) * 1.5, 0, 1),
         np.clip(1.5 * (1 - heat), 0, 1)],
        axis=-1,
    )  # fmt: skip
    base = np.asarray(image.convert("RGB"), dtype=np.float32) / 255
    mixed = (1 - alpha) * base + alpha * colours
    return Image.fromarray((mixed * 255).clip(0, 255).astype(np.uint8))


def explain_png(
    classifier: Classifier, image: Image.Image, label: str, *, fitted: bool = False
) -> bytes:
    """Grad-CAM of `label` for one cell image, drawn over the image as the model saw it.

    `image` is what the classifier was given for the cell (`webportal.pipeline.pixels.open_cell`:
    a located cell's square from `ml.locate.crop_cell`, not its bare box); fitted=True says it
    is already the input square (the copy fitted at upload), which must not be fitted again."""
    picture = image.convert("RGB")
    square = picture if fitted else classifier.fit_to_input(picture)
    # to_input applies the checkpoint's stain normalisation, as prediction does. The map is of
    # the picture as is (the identity view): a checkpoint with test-time views averages the
    # logits of turned copies too, but a map of one view is what a person can read over it.
    x = classifier.to_input(square)[None].to(classifier.device)
    # The eager PyTorch model: a faster engine swapped in for inference may have no gradients.
    cam = grad_cam(classifier.eager, x.contiguous(), classifier.classes.index(label))
    buffer = io.BytesIO()
    overlay(square, cam).save(buffer, format="PNG")
    return buffer.getvalue()
