"""Self-describing checkpoints: the file alone is enough to rebuild and run the model.

Only plain Python types and tensors are stored, so `torch.load(weights_only=True)` can read
checkpoints without executing pickled code.

Optional fields of format 1, written only when they differ from what their absence means (so
a checkpoint without them, like every trained one, is read and run exactly as before):

- `views`: the test-time views (`ml.views.VIEWS` names) whose logits `ml.inference.Classifier`
  averages; absent = ["identity"], the picture as is.
- `stain_source` and `stain_target` (together or neither): Reinhard statistics
  (`ml.stain.StainStats.to_dict`) of the lab's pictures and of the stain the model was
  trained on; `Classifier` moves every picture's colours from the one to the other before
  the network sees it. Absent = no stain normalisation.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ml.model import build_model
from ml.ood import OODGuard
from ml.stain import StainStats
from ml.views import check_views

# What an absent `views` means: the picture as is, one forward pass.
IDENTITY_ONLY = ("identity",)

FORMAT_VERSION = 1


@dataclass(frozen=True)
class CheckpointMeta:
    format_version: int
    arch: str
    classes: list[str]
    input_size: int
    mean: list[float]
    std: list[float]
    temperature: float = 1.0
    threshold: float | None = None
    resize: str = "crop"  # ml.transforms.eval_transform mode; absent in older files = "crop"
    recipe: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    views: tuple[str, ...] = IDENTITY_ONLY
    stain_source: StainStats | None = None  # with stain_target: Reinhard from this ...
    stain_target: StainStats | None = None  # ... to this (the training stain)


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    *,
    arch: str,
    classes: Sequence[str],
    input_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    recipe: dict[str, Any],
    metrics: dict[str, Any],
    temperature: float = 1.0,
    threshold: float | None = None,
    resize: str = "crop",
    ood: dict[str, Any] | None = None,
    views: Sequence[str] = IDENTITY_ONLY,
    stain: tuple[StainStats, StainStats] | None = None,
) -> None:
    """ood: a batch guard's `ml.ood.OODGuard.to_dict()` (tensors and floats), stored as `ood`.
    views: test-time views (stored only when not the picture alone); stain: (source, target)
    Reinhard statistics, stored as `stain_source` and `stain_target`."""
    views = check_views(views)
    ckpt = {
        "format_version": FORMAT_VERSION,
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        "arch": arch,
        "classes": list(classes),
        "input_size": int(input_size),
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
        "temperature": float(temperature),
        "threshold": None if threshold is None else float(threshold),
        "resize": str(resize),
        "recipe": dict(recipe),
        "metrics": dict(metrics),
    }
    if ood is not None:
        ckpt["ood"] = dict(ood)
    if views != IDENTITY_ONLY:
        ckpt["views"] = list(views)
    if stain is not None:
        ckpt["stain_source"], ckpt["stain_target"] = stain[0].to_dict(), stain[1].to_dict()
    atomic_save(ckpt, path)


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """torch.save to a temp file in the same folder, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; the portal may run as another user
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _meta(ckpt: dict[str, Any]) -> CheckpointMeta:
    version = ckpt.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(f"unsupported checkpoint format_version {version!r}")
    if (ckpt.get("stain_source") is None) != (ckpt.get("stain_target") is None):
        raise ValueError("a checkpoint has both stain_source and stain_target, or neither")
    source, target = ckpt.get("stain_source"), ckpt.get("stain_target")
    return CheckpointMeta(
        format_version=version,
        arch=ckpt["arch"],
        classes=list(ckpt["classes"]),
        input_size=int(ckpt["input_size"]),
        mean=[float(m) for m in ckpt["mean"]],
        std=[float(s) for s in ckpt["std"]],
        temperature=float(ckpt.get("temperature", 1.0)),
        threshold=ckpt.get("threshold"),
        resize=str(ckpt.get("resize", "crop")),
        recipe=dict(ckpt.get("recipe", {})),
        metrics=dict(ckpt.get("metrics", {})),
        views=check_views(ckpt.get("views", IDENTITY_ONLY)),
        stain_source=None if source is None else StainStats.from_dict(source),
        stain_target=None if target is None else StainStats.from_dict(target),
    )


def read_metadata(path: str | os.PathLike[str]) -> CheckpointMeta:
    """Metadata without building the model (e.g. to register a model in the portal)."""
    return _meta(torch.load(path, map_location="cpu", weights_only=True))


def load_checkpoint(
    path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, CheckpointMeta]:
    """(model in eval mode with the stored weights, metadata)."""
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    meta = _meta(ckpt)
    model = build_model(meta.arch, len(meta.classes), pretrained=None)
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    return model, meta


def load_ood(path: str | os.PathLike[str]) -> OODGuard | None:
    """The checkpoint's batch guard, or None when it has none (older files)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return None if ckpt.get("ood") is None else OODGuard.from_dict(ckpt["ood"])


def sha256_of(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
