from __future__ import annotations

import json

from bench import train_cost


def test_the_training_cost_bench_times_each_depth_and_compares_the_whole_network(tmp_path):
    out = tmp_path / "cost.json"
    argv = ["--blocks", "0", "10", "--input-size", "32", "--batch-size", "4", "--repeats", "3"]
    argv += ["--threads", "1", "--cells", "100", "--json", str(out)]

    report = train_cost.main(train_cost.get_args_parser().parse_args(argv))

    assert json.loads(out.read_text())["blocks"] == report["blocks"]
    whole, tail = report["blocks"]["0"], report["blocks"]["10"]
    assert whole["whole_network_vs_this"] == 1.0
    # Training from block 10 runs fewer layers backwards than the whole network.
    assert tail["step_seconds"] < whole["step_seconds"]
    assert tail["whole_network_vs_this"] > 1.0
    assert tail["epoch_minutes"] == round(100 / tail["cells_per_second"] / 60, 1)
