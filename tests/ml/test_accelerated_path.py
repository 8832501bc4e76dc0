"""The GPU worker's code path (channels-last + autocast), exercised on the CPU."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from ml.inference import Classifier
from ml.testing import make_tiny_checkpoint


def test_the_accelerated_path_agrees_with_plain_fp32(tmp_path: Path) -> None:
    path = make_tiny_checkpoint(tmp_path / "m.pt", ["a", "b", "c"], input_size=32)
    plain = Classifier.load(path, device="cpu")
    fast = Classifier.load(path, device="cpu", accelerate=True)
    assert fast.accelerate
    assert not plain.accelerate  # off by default on a CPU
    images = [Image.effect_noise((40, 40), 30 + i).convert("RGB") for i in range(16)]
    batch = plain.preprocess(images)
    plain_probs = torch.softmax(plain.predict_logits(batch), dim=1)
    fast_probs = torch.softmax(fast.predict_logits(batch), dim=1)
    assert fast_probs.dtype == torch.float32
    # bfloat16 keeps about three significant digits: close, not identical.
    assert torch.allclose(plain_probs, fast_probs, atol=0.03)
