"""The Markdown tables of a `ml.crosscheck` JSON report (as quoted in docs/MODELS.md).

python -m ml.crosscheck_report ml/weights/wbc-mobilenetv2.crosscheck.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _f(v: Any, digits: int = 4) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def markdown(report: dict[str, Any]) -> str:
    out = [
        "| left-out lab (source) | trained on | cells scored | untaught (not scored) "
        "| accuracy | macro-F1 | coverage / accuracy above the cross-lab threshold "
        "| coverage / accuracy above the in-lab (val) threshold |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for lab, e in report["folds"].items():
        if "left_out" not in e:
            continue
        rows = [(lab, e["left_out"])] + [
            (f"{lab} ({s})", r) for s, r in e.get("left_out_by_source", {}).items()
        ]
        for name, r in rows:
            out.append(
                f"| {name} | {', '.join(e['trained_on'])} | {r['n']} | "
                f"{', '.join(f'{k} {v}' for k, v in r['untaught'].items()) or '-'} | "
                f"{_f(r['accuracy'])} | {_f(r['macro_f1'])} | "
                f"{_f(r.get('coverage@cross'))} / {_f(r.get('accuracy_above@cross'))} | "
                f"{_f(r.get('coverage@val'))} / {_f(r.get('accuracy_above@val'))} |"
            )
    out += [
        "",
        f"Cross-lab threshold: {_f(report['cross_threshold'])}; no threshold reaches the "
        f"target on: {', '.join(report.get('threshold_unattainable_on', [])) or 'none'}.",
        "",
        "| batch guard, left-out lab | batch size | AUROC (in-distribution vs left-out batches) "
        "| left-out batches flagged | in-distribution batches flagged (false alarms) |",
        "|---|---|---|---|---|",
    ]
    for lab, e in report["folds"].items():
        for key, g in e["guard"].items():
            if not key.startswith("batch_"):
                continue
            out.append(
                f"| {lab if 'left_out' in e else 'none (all labs)'} | {key[6:]} | "
                f"{_f(g.get('auroc'))} | {_f(g.get('flagged'))} | {_f(g.get('false_alarm'))} |"
            )
    if "adaptation" in report:
        a = report["adaptation"]
        out += [
            "",
            f"Adaptation to lab `{a['lab']}` ({a['n_test']} of its val cells; mean over seeds):",
            "",
            "| labelled cells per class | accuracy, all classes | accuracy, classes known before "
            "| seeds |",
            "|---|---|---|---|",
        ]
        for n, c in a["curve"].items():
            out.append(
                f"| {n} | {_f(c['accuracy_all'])} | {_f(c['accuracy_common'])} | {len(c['runs'])} |"
            )
    all_fold = report["folds"].get("all")
    if all_fold is not None:
        out += [
            "",
            "| all-labs model, val cells of | n | accuracy | macro-F1 | coverage / accuracy above "
            "its val threshold |",
            "|---|---|---|---|---|",
        ]
        rows = [("every source", all_fold["val"]), *list(all_fold.get("val_by_source", {}).items())]
        for name, r in rows:
            out.append(
                f"| {name} | {r['n']} | {_f(r['accuracy'])} | {_f(r['macro_f1'])} | "
                f"{_f(r.get('coverage@val'))} / {_f(r.get('accuracy_above@val'))} |"
            )
    return "\n".join(out)


if __name__ == "__main__":
    print(markdown(json.loads(Path(sys.argv[1]).read_text())))
