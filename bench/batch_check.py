"""What the batch guard costs the worker per batch: `python -m bench.batch_check`.

The worker checks at most 100 cells of a batch (`webportal.pipeline.verdict.check_batch`): it
decodes them once more and runs the model's trunk over them for the guard's pooled features,
eager or (`Classifier.use_feature_engine`, what the worker does when the scores agree) on the
engine that classifies. This times those steps on real cells, with the worker's one thread,
beside classifying the same cells on the engine the worker would pick, so the extra cost reads
as a share of the classification.

The shipped checkpoints have no guard; one is fitted here on the cells' own features (the
timing does not depend on what the guard was fitted on: it is a matrix product of the features).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ml.engine import choose_engine
from ml.inference import Classifier
from ml.ood import OODGuard


def _cells(folder: Path, n: int) -> list[Path]:
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    if not paths:
        raise SystemExit(f"no images under {folder}")
    return [paths[i * len(paths) // n] for i in range(n)] if len(paths) >= n else paths


def _best(fn: Any, repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times), times


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="ml/weights/pbc8-mobilenetv2.pt")
    p.add_argument("--data", default="../shared/data/pbc/dev")
    p.add_argument("--cells", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    paths = _cells(Path(args.data), args.cells)
    classifier = Classifier.load(args.model, device="cpu")

    def decode() -> torch.Tensor:
        pictures = []
        for path in paths:
            with Image.open(path) as picture:
                pictures.append(picture.convert("RGB"))
        return classifier.preprocess(pictures)

    batch = decode()
    # The pooled features alone: the guard fitted here reads those, whatever guard (and taps)
    # the checkpoint carries.
    classifier.ood = None
    features = classifier.embed(batch)
    guard = OODGuard.fit(features, torch.arange(len(features)) % len(classifier.classes))
    guard.thresholds = {1: 1e9, 5: 1e9, 20: 1e9, 100: 1e9}
    classifier.ood = guard
    engine = choose_engine(
        classifier.eager, input_size=classifier.input_size, check=batch[:8], wanted="auto"
    )
    classifier.model, classifier.engine = engine.model, engine.name

    decode_s, decode_all = _best(decode, args.repeats)
    eager_s, eager_all = _best(lambda: classifier.check_batch(batch), args.repeats)
    eager_check = classifier.check_batch(batch)
    refused = classifier.use_feature_engine(engine.name, check=batch[:8])
    engine_s, engine_all = _best(lambda: classifier.check_batch(batch), args.repeats)
    engine_check = classifier.check_batch(batch)
    classify_s, classify_all = _best(lambda: classifier.predict_logits(batch), args.repeats)
    assert eager_check is not None
    assert engine_check is not None
    result = {
        "model": args.model,
        "cells": len(paths),
        "input_size": classifier.input_size,
        "threads": args.threads,
        "engine": classifier.engine,
        "guard_features_engine": classifier.feature_engine,
        "guard_features_refused": refused,
        "decode_s_best": round(decode_s, 3),
        "check_eager_s_best": round(eager_s, 3),
        "check_engine_s_best": round(engine_s, 3),
        "classify_s_best": round(classify_s, 3),
        "check_eager_over_classify": round(eager_s / classify_s, 2),
        "check_engine_over_classify": round(engine_s / classify_s, 2),
        "score_eager": eager_check.score,
        "score_engine": engine_check.score,
        "medians_s": {
            "decode": round(statistics.median(decode_all), 3),
            "check_eager": round(statistics.median(eager_all), 3),
            "check_engine": round(statistics.median(engine_all), 3),
            "classify": round(statistics.median(classify_all), 3),
        },
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
