"""The Markdown tables of `ml.guard` JSON reports (as quoted in docs/MODELS.md).

python -m ml.guard_report ml/weights/*.guard.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def markdown(reports: dict[str, dict[str, Any]]) -> str:
    """Per model, fold and batch size: the threshold calibrated on one half of the val cells,
    the share of batches of the other half flagged (false alarms) and of each away pool
    flagged (detections); then the shipped limits and their bootstrap interval."""
    pools = sorted({name for r in reports.values() for name in r["away"]})
    out = [
        "| model | fold | batch | limit | in-lab flagged (false alarms) | "
        + " | ".join(f"{p} flagged" for p in pools)
        + " |",
        "|---|---|---|---|---|" + "---|" * len(pools),
    ]
    for model, r in reports.items():
        sizes = sorted(int(k.split("_")[1]) for k in r["measured"]["mean"])
        for k, fold in enumerate(r["measured"]["folds"], start=1):
            for n in sizes:
                e = fold[f"batch_{n}"]
                cells = [_pct(e[p]["detected"]) if p in e else "-" for p in pools]
                out.append(
                    f"| {model} | {k} | {n} | {e['threshold']:.2f} | {_pct(e['false_alarm'])} | "
                    + " | ".join(cells)
                    + " |"
                )
        for n in sizes:
            e = r["measured"]["mean"][f"batch_{n}"]
            cells = [_pct(e[p]) if p in e else "-" for p in pools]
            out.append(
                f"| {model} | mean | {n} | | **{_pct(e['false_alarm'])}** | "
                + " | ".join(cells)
                + " |"
            )
    out += [
        "",
        "| model | fitted on (cells) | calibrated on (val cells / groups) | shipped limits "
        "(1 / 5 / 20 / 100 cells) | bootstrap 95% interval of the limit for 20 / 100 cells |",
        "|---|---|---|---|---|",
    ]
    for model, r in reports.items():
        t = r["shipped_thresholds"]
        b = r["bootstrap"]
        limits = " / ".join(f"{t[s]:.2f}" for s in ("1", "5", "20", "100"))
        spread = " / ".join(
            f"{b[f'batch_{n}']['p2.5']:.2f}-{b[f'batch_{n}']['p97.5']:.2f}" for n in (20, 100)
        )
        out.append(
            f"| {model} | {r['fitted_on']['cells']} | {r['val']['cells']} / "
            f"{r['val']['groups']} | {limits} | {spread} |"
        )
    return "\n".join(out)


def main(argv: list[str]) -> None:
    reports = {Path(p).name.split(".")[0]: json.loads(Path(p).read_text()) for p in argv}
    print(markdown(reports))


if __name__ == "__main__":
    main(sys.argv[1:])
