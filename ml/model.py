"""Model construction: a registry of torchvision architectures with a replaceable head.

`build_model` is the one place that knows how each architecture names its classifier and, for
transfer learning, where its frozen trunk ends and its trainable tail begins.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import torch
import torchvision
from torch import nn

# Where the CLIs look for a local ImageNet state_dict when --weights is not given. "download"
# falls back to torchvision's hub weights (needs internet).
WEIGHTS_ENV = "HEMATOVISION_IMAGENET_WEIGHTS"


def default_weights() -> str:
    return os.environ.get(WEIGHTS_ENV, "download")


@dataclass(frozen=True)
class Arch:
    builder: Callable[..., nn.Module]
    hub_weights: str  # torchvision weights enum entry used for pretrained="download"
    replace_head: Callable[[nn.Module, int], None]


def _sequential(model: nn.Module, name: str) -> nn.Sequential:
    return cast(nn.Sequential, model.get_submodule(name))


def _replace_last_linear(seq: nn.Sequential, num_classes: int) -> None:
    last = seq[-1]
    assert isinstance(last, nn.Linear)
    seq[-1] = nn.Linear(last.in_features, num_classes)


def _mobilenet_head(model: nn.Module, num_classes: int) -> None:
    _replace_last_linear(_sequential(model, "classifier"), num_classes)


def _resnet_head(model: nn.Module, num_classes: int) -> None:
    fc = model.get_submodule("fc")
    assert isinstance(fc, nn.Linear)
    model.add_module("fc", nn.Linear(fc.in_features, num_classes))


def _vgg_head(model: nn.Module, num_classes: int) -> None:
    _replace_last_linear(_sequential(model, "classifier"), num_classes)


ARCHS: dict[str, Arch] = {
    "mobilenet_v2": Arch(
        torchvision.models.mobilenet_v2, "MobileNet_V2_Weights.IMAGENET1K_V1", _mobilenet_head
    ),
    "resnet50": Arch(torchvision.models.resnet50, "ResNet50_Weights.IMAGENET1K_V1", _resnet_head),
    "vgg16": Arch(torchvision.models.vgg16, "VGG16_Weights.IMAGENET1K_V1", _vgg_head),
}


def build_model(
    arch: str, num_classes: int, *, pretrained: str | os.PathLike[str] | None = None
) -> nn.Module:
    """Build `arch` with a fresh `num_classes` head.

    pretrained: a local ImageNet state_dict file (loaded strictly into the 1000-class model
    before the head is replaced, so a mismatched file fails loudly), "download" for
    torchvision's hub weights, or None for random initialisation.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose from {sorted(ARCHS)}")
    spec = ARCHS[arch]
    if pretrained is None:
        model = spec.builder(weights=None)
    elif str(pretrained) == "download":
        model = spec.builder(weights=torchvision.models.get_weight(spec.hub_weights))
    else:
        model = spec.builder(weights=None)
        model.load_state_dict(torch.load(pretrained, map_location="cpu", weights_only=True))
    spec.replace_head(model, num_classes)
    return model


class MobileNetTail(nn.Module):
    """features[k:] + pooling + classifier of a MobileNetV2, sharing its modules.

    Training this trains the model in place, so the full model's state_dict is always current.
    """

    def __init__(self, model: nn.Module, k: int) -> None:
        super().__init__()
        self.blocks = _sequential(model, "features")[k:]
        self.classifier = model.get_submodule("classifier")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(x)
        x = nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)
        out: torch.Tensor = self.classifier(x)
        return out


def split_trunk_tail(model: nn.Module, arch: str, k: int) -> tuple[nn.Module, nn.Module]:
    """Split into a trunk (kept frozen, its outputs cacheable) and a trainable tail."""
    if arch != "mobilenet_v2":
        raise NotImplementedError(f"trunk/tail split is only defined for mobilenet_v2, not {arch}")
    features = _sequential(model, "features")
    if not 0 < k < len(features):
        raise ValueError(f"k must be in 1..{len(features) - 1}, got {k}")
    return features[:k], MobileNetTail(model, k)
