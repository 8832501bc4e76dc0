"""bench.locate on the committed sample fields with a tiny model: the report's shape, not speed."""

from __future__ import annotations

import json
from pathlib import Path

from bench import locate as locate_bench
from ml.locate import list_images, locate
from ml.testing import make_tiny_checkpoint

FIELDS = Path(__file__).resolve().parents[2] / "samples" / "fields"


def test_the_locate_benchmark_reports_every_setting_and_counts_the_cells(tmp_path):
    model = make_tiny_checkpoint(tmp_path / "m.pt", ["a", "b"], resize="stain")
    out = tmp_path / "bench.json"
    report = locate_bench.main(
        ["--json", str(out), "--data", str(FIELDS), "--model", str(model), "--repeats", "1"]
    )
    assert json.loads(out.read_text()) == report
    fields = list_images(FIELDS)
    expected_cells = sum(len(locate(locate_bench._open_rgb(p))) for p in fields)
    for name in ("locate_1_process", "locate_2_processes", "locate_classify_raw"):
        (run,) = report["runs"][name]
        assert run["fields"] == len(fields)
        assert run["cells"] == expected_cells
        assert run["fields_per_second"] > 0
    summary = report["summary"]
    assert summary["locate_classify_raw_cells_per_second"] > 0
    assert summary["locate_fields_per_second_2_processes"] > 0
