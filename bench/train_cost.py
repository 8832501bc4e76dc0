"""How much does training deeper cost on this machine? One training step (forward, backward,
AdamW) of MobileNetV2 on a batch of cells, trained from block K on (the blocks before K frozen
and cached, as ml.crosscheck and ml.train do) and the whole network (K = 0).

    python -m bench.train_cost --json bench/results/2026-12-07-train-cost.json

Random pictures and weights (the cost does not depend on them), 8 classes, --input-size px,
--threads threads; the best of --repeats steps after one warm-up step. Prints cells per second
per K and the whole network's cost relative to each K; the epoch estimate is --cells divided
by the rate (no data loading, no validation).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from bench.machine import machine_info
from ml.model import FeaturesTail, build_model, split_trunk_tail


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--blocks", type=int, nargs="+", default=[0, 4, 7, 10], help="K (0: whole)")
    p.add_argument("--input-size", type=int, default=192)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cells", type=int, default=8712, help="cells an epoch (the estimate)")
    p.add_argument("--json")
    return p


def step_seconds(k: int, args: argparse.Namespace) -> float:
    model = build_model("mobilenet_v2", 8, pretrained=None)
    x = torch.randn(args.batch_size, 3, args.input_size, args.input_size)
    if k:
        trunk, _ = split_trunk_tail(model, "mobilenet_v2", k)
        with torch.no_grad():
            x = trunk(x)
        trained: torch.nn.Module = FeaturesTail(model, k)
    else:
        trained = model
    optimiser = torch.optim.AdamW(trained.parameters(), lr=1e-3)
    times = []
    for _ in range(args.repeats + 1):
        t0 = time.perf_counter()
        trained(x).logsumexp(1).mean().backward()
        optimiser.step()
        optimiser.zero_grad()
        times.append(time.perf_counter() - t0)
    return min(times[1:])


def main(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    rows = {}
    for k in args.blocks:
        seconds = step_seconds(k, args)
        rate = args.batch_size / seconds
        rows[str(k)] = {
            "step_seconds": round(seconds, 3),
            "cells_per_second": round(rate, 1),
            "epoch_minutes": round(args.cells / rate / 60, 1),
        }
        print(f"from block {k}: {seconds:.2f} s a step, {rate:.1f} cells/s", flush=True)
    if "0" in rows:
        whole = rows["0"]["step_seconds"]
        for row in rows.values():
            row["whole_network_vs_this"] = round(whole / row["step_seconds"], 2)
    report = {"command": vars(args), "machine": machine_info(), "blocks": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main(get_args_parser().parse_args())
