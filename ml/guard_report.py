"""The Markdown tables of `ml.guard` JSON reports and of an `ml.guard_study` report (as quoted in
docs/MODELS.md).

python -m ml.guard_report ml/weights/trials/pbc8-mobilenetv2.guard-pooled.json \
    ml/weights/kaggle4-mobilenetv2.guard.json
python -m ml.guard_report --study ml/weights/pbc8-mobilenetv2.guard-study.json
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


def _interval(v: list[float]) -> str:
    return f"{100 * v[0]:.1f}-{100 * v[1]:.1f}%"


def study_markdown(report: dict[str, Any]) -> str:
    """One table per left-out lab: per design and batch size, the share of in-lab test batches
    flagged (false alarms, per in-lab pool) and of every away pool's batches flagged
    (detections), calibration and test halves swapped and averaged; then the bootstrap 95 %
    intervals of the designs that were bootstrapped."""
    out: list[str] = []
    designs: dict[str, dict[str, Any]] = report["designs"]
    folds = list(next(iter(designs.values())))
    for fold in folds:
        first = next(iter(designs.values()))[fold]
        sizes = sorted(int(k.split("_")[1]) for k in first if k.startswith("batch_"))
        inside = list(first[f"batch_{sizes[0]}"]["false_alarm"])
        away = list(first[f"batch_{sizes[0]}"]["detected"])
        out += [
            f"Guard fitted {fold} (fitted on {first['fitted_on']} cells; calibrated on "
            + ", ".join(
                f"{k} {v[0]} cells / {v[1]} groups" for k, v in first["calibrated_on"].items()
            )
            + "):",
            "",
            "| design | batch | "
            + " | ".join(f"{p} false alarms" for p in inside)
            + " | "
            + " | ".join(f"{p} flagged" for p in away)
            + " |",
            "|---|---|" + "---|" * (len(inside) + len(away)),
        ]
        for design, r in designs.items():
            for n in sizes:
                e = r[fold][f"batch_{n}"]
                out.append(
                    f"| {design} | {n} | "
                    + " | ".join(_pct(e["false_alarm"][p]) for p in inside)
                    + " | "
                    + " | ".join(_pct(e["detected"][p]) for p in away)
                    + " |"
                )
        out.append("")
    boot = [(d, f, r[f]["bootstrap"]) for d, r in designs.items() for f in r if "bootstrap" in r[f]]
    if boot:
        out += [
            "Bootstrap 95% intervals (calibration and test cells resampled by group, "
            "threshold refitted):",
            "",
            "| design | fold | batch | threshold | false alarms | flagged, per away pool |",
            "|---|---|---|---|---|---|",
        ]
        for design, fold, b in boot:
            for key in sorted((k for k in b if k.startswith("batch_")), key=lambda k: int(k[6:])):
                e = b[key]
                det = "; ".join(
                    f"{k[9:]} {_interval(v)}" for k, v in e.items() if k.startswith("detected ")
                )
                out.append(
                    f"| {design} | {fold} | {key[6:]} | {e['threshold'][0]:.2f}-"
                    f"{e['threshold'][1]:.2f} | {_interval(e['false_alarm'])} | {det} |"
                )
    return "\n".join(out)


def main(argv: list[str]) -> None:
    if argv[:1] == ["--study"]:
        print(study_markdown(json.loads(Path(argv[1]).read_text())))
        return
    reports = {Path(p).name.split(".")[0]: json.loads(Path(p).read_text()) for p in argv}
    print(markdown(reports))


if __name__ == "__main__":
    main(sys.argv[1:])
