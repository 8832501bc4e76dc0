"""The differential as a lab reports it: pure arithmetic, no database.

- Percentages are of leukocytes (WBC). Erythroblasts (nucleated red cells) are reported per
  100 WBC, platelets apart; unidentified cells and cells marked "not classed" are outside the
  denominator and shown apart.
- Shown percentages are rounded to one decimal place by the largest-remainder method, so the
  leukocyte percentages always add up to exactly 100.0.
- With a WBC count (x10^9/L) each leukocyte class also gets an absolute count, flagged
  against its own absolute reference interval. When nucleated red cells (erythroblasts) are
  counted the WBC count is first corrected for them (corrected_wbc: the analyser counts them
  as leukocytes), and the absolute counts use the corrected count.
- Flags: a class outside the lab's reference range, immature cells present, unidentified cells
  left, too few leukocytes counted for a reliable differential.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction
from typing import Any

UNIDENTIFIED = "unidentified"
NOT_CLASSED = "not classed"

# Classes outside the leukocyte denominator, by name (case-insensitive; classes come from the
# checkpoint, these are the names the shipped models use).
PER_100_WBC = frozenset({"erythroblast"})
APART = frozenset({"platelet"})
IMMATURE = frozenset({"ig", "erythroblast"})
# Under this many leukocytes a differential is statistically weak (the usual manual count is 100).
MIN_RELIABLE_WBC = 100

# Adult reference intervals, % of leukocytes. A lab replaces them with its own.
DEFAULT_REFERENCE_RANGES: dict[str, tuple[float, float]] = {
    "neutrophil": (40.0, 75.0),
    "lymphocyte": (20.0, 45.0),
    "monocyte": (2.0, 10.0),
    "eosinophil": (0.0, 6.0),
    "basophil": (0.0, 2.0),
    "ig": (0.0, 1.0),
}


# Adult absolute reference intervals, x10^9/L (the UK NHS range of Oxford University Hospitals,
# as tabulated in Front. Pharmacol. 2020;11:314, table 6, PMC7082321). A lab replaces them.
DEFAULT_ABSOLUTE_RANGES: dict[str, tuple[float, float]] = {
    "neutrophil": (2.0, 7.0),
    "lymphocyte": (1.0, 3.0),
    "monocyte": (0.2, 1.0),
    "eosinophil": (0.02, 0.5),
    "basophil": (0.02, 0.1),
}
# Correct the WBC count from this many NRBC per 100 WBC (a lab sets its own, or never).
NRBC_CORRECTION_FROM = 5
# The textbook correction (Rodak's Diagnostic Hematology; docs/REPORTS.md has the sources).
NRBC_CORRECTION = "WBC corrected for NRBC = WBC x 100 / (100 + NRBC per 100 WBC)"


class Group:
    WBC = "wbc"
    PER_100_WBC = "per_100_wbc"
    APART = "apart"
    UNIDENTIFIED = "unidentified"
    NOT_CLASSED = "not_classed"


@dataclass(frozen=True)
class Row:
    label: str
    group: str
    count: int
    # % of leukocytes (WBC group), per 100 WBC (erythroblasts), None for the rows shown apart.
    percent: float | None
    absolute: float | None = None  # x10^9/L, when a WBC count is given
    low: float | None = None  # the reference range used for the flag
    high: float | None = None
    flag: str = ""  # "H", "L" or ""
    # The absolute count's own reference interval (x10^9/L) and flag, when both are known.
    absolute_low: float | None = None
    absolute_high: float | None = None
    absolute_flag: str = ""


@dataclass(frozen=True)
class Flag:
    code: str  # out_of_range | immature | unidentified | low_count
    message: str


@dataclass(frozen=True)
class Differential:
    rows: list[Row]
    wbc_cells: int
    total_cells: int
    flags: list[Flag] = field(default_factory=list)
    # The WBC count corrected for nucleated red cells (corrected_wbc), when it was corrected.
    corrected_wbc: Decimal | None = None

    def row(self, label: str) -> Row | None:
        return next((row for row in self.rows if row.label == label), None)

    @property
    def unidentified(self) -> int:
        found = self.row(UNIDENTIFIED)
        return found.count if found else 0

    def rows_json(self) -> list[dict[str, Any]]:
        return [asdict(row) for row in self.rows]

    def flags_json(self) -> list[dict[str, str]]:
        return [asdict(flag) for flag in self.flags]


def group_of(label: str) -> str:
    name = label.lower()
    if name == UNIDENTIFIED:
        return Group.UNIDENTIFIED
    if name == NOT_CLASSED:
        return Group.NOT_CLASSED
    if name in PER_100_WBC:
        return Group.PER_100_WBC
    if name in APART:
        return Group.APART
    return Group.WBC


def largest_remainder(counts: Sequence[int], *, decimals: int = 1) -> list[float]:
    """Percentages of sum(counts) with `decimals` places that add up to exactly 100.

    Each share gets its rounded-down value; the units left go to the largest remainders
    (ties: the larger count, then the earlier class), so 1/16 shows as 6.3 or 6.2 as the
    total needs, never 6.25 or a column summing to 99.9.
    """
    total = sum(counts)
    if total == 0:
        return [0.0 for _ in counts]
    units = 100 * 10**decimals
    quotas = [Fraction(count * units, total) for count in counts]
    floors = [int(quota) for quota in quotas]
    left = units - sum(floors)
    order = sorted(
        range(len(counts)), key=lambda i: (quotas[i] - floors[i], counts[i], -i), reverse=True
    )
    for i in order[:left]:
        floors[i] += 1
    return [floor / 10**decimals for floor in floors]


def _round(value: Fraction, places: str) -> float:
    exact = Decimal(value.numerator) / Decimal(value.denominator)
    return float(exact.quantize(Decimal(places), rounding=ROUND_HALF_UP))


def nrbc_per_100_wbc(*, nrbc: int, wbc_cells: int) -> Fraction | None:
    return Fraction(100 * nrbc, wbc_cells) if wbc_cells else None


def corrected_wbc(*, wbc_count: Decimal, nrbc: int, wbc_cells: int) -> Fraction:
    """The WBC count corrected for nucleated red cells, exact: WBC x 100 / (100 + NRBC per
    100 WBC). An analyser that does not tell them apart counts an NRBC as a leukocyte; a
    differential counts them apart, per 100 WBC. Unchanged when none were counted."""
    per_100 = nrbc_per_100_wbc(nrbc=nrbc, wbc_cells=wbc_cells)
    if not per_100:
        return Fraction(wbc_count)
    return Fraction(wbc_count) * 100 / (100 + per_100)


def _absolute_flag(value: Fraction, bounds: tuple[float, float] | None) -> str:
    """H or L against the absolute interval, decided on the unrounded value."""
    if bounds is None:
        return ""
    low, high = bounds
    if value > Fraction(str(high)):
        return "H"
    if value < Fraction(str(low)):
        return "L"
    return ""


def build_differential(
    *,
    classes: Sequence[str],
    counts: Mapping[str, int],
    wbc_count: Decimal | None = None,
    reference_ranges: Mapping[str, tuple[float, float]] | None = None,
    absolute_ranges: Mapping[str, tuple[float, float]] | None = None,
    min_reliable_wbc: int = MIN_RELIABLE_WBC,
    nrbc_correction_from: int | None = NRBC_CORRECTION_FROM,
) -> Differential:
    """The differential of `counts` (current label -> cells) for a model with `classes`."""
    ranges = {
        label.lower(): bounds
        for label, bounds in (
            DEFAULT_REFERENCE_RANGES if reference_ranges is None else reference_ranges
        ).items()
    }
    absolute_bounds = {
        label.lower(): bounds
        for label, bounds in (
            DEFAULT_ABSOLUTE_RANGES if absolute_ranges is None else absolute_ranges
        ).items()
    }
    wbc_labels = [label for label in classes if group_of(label) == Group.WBC]
    wbc_counts = [counts.get(label, 0) for label in wbc_labels]
    wbc_cells = sum(wbc_counts)
    percents = dict(zip(wbc_labels, largest_remainder(wbc_counts), strict=True))
    nrbc = sum(counts.get(label, 0) for label in classes if label.lower() in PER_100_WBC)
    nrbc_share = nrbc_per_100_wbc(nrbc=nrbc, wbc_cells=wbc_cells)
    if nrbc_correction_from is None or nrbc_share is None or nrbc_share < nrbc_correction_from:
        nrbc = 0  # below the lab's threshold (or never): the WBC count is used as measured
    exact_wbc = (
        corrected_wbc(wbc_count=wbc_count, nrbc=nrbc, wbc_cells=wbc_cells)
        if wbc_count is not None
        else None
    )
    corrected = (
        Decimal(str(_round(exact_wbc, "0.01")))
        if exact_wbc is not None and nrbc and wbc_cells
        else None
    )

    rows: list[Row] = []
    flags: list[Flag] = []
    for label in classes:
        count = counts.get(label, 0)
        group = group_of(label)
        if group == Group.WBC:
            percent = percents[label]
            exact_absolute = (
                exact_wbc * count / wbc_cells if exact_wbc is not None and wbc_cells else None
            )
            absolute = None if exact_absolute is None else _round(exact_absolute, "0.01")
            bounds = absolute_bounds.get(label.lower())
            absolute_flag = "" if exact_absolute is None else _absolute_flag(exact_absolute, bounds)
            if absolute_flag and bounds is not None:
                side = "above" if absolute_flag == "H" else "below"
                flags.append(
                    Flag(
                        "out_of_range",
                        f"{label} {absolute:.2f} x10^9/L is {side} the reference range "
                        f"{bounds[0]:g}-{bounds[1]:g} x10^9/L.",
                    )
                )
            low, high = ranges.get(label.lower(), (None, None))
            flag = ""
            if wbc_cells and high is not None and percent > high:
                flag = "H"
            elif wbc_cells and low is not None and percent < low:
                flag = "L"
            if flag:
                side = "above" if flag == "H" else "below"
                flags.append(
                    Flag(
                        "out_of_range",
                        f"{label} {percent:.1f}% is {side} the reference range {low:g}-{high:g}%.",
                    )
                )
            rows.append(
                Row(
                    label,
                    group,
                    count,
                    percent,
                    absolute,
                    low,
                    high,
                    flag,
                    absolute_low=bounds[0] if bounds is not None else None,
                    absolute_high=bounds[1] if bounds is not None else None,
                    absolute_flag=absolute_flag,
                )
            )
        elif group == Group.PER_100_WBC:
            per_100 = _round(Fraction(100 * count, wbc_cells), "0.1") if wbc_cells else None
            rows.append(Row(label, group, count, per_100))
        else:
            rows.append(Row(label, group, count, None))
    unidentified = counts.get(UNIDENTIFIED, 0)
    not_classed = counts.get(NOT_CLASSED, 0)
    rows.append(Row(UNIDENTIFIED, Group.UNIDENTIFIED, unidentified, None))
    rows.append(Row(NOT_CLASSED, Group.NOT_CLASSED, not_classed, None))

    immature = [
        f"{label} {counts.get(label, 0)}"
        for label in classes
        if label.lower() in IMMATURE and counts.get(label, 0)
    ]
    if immature:
        flags.append(Flag("immature", f"Immature cells present: {', '.join(immature)}."))
    if unidentified:
        flags.append(
            Flag(
                "unidentified",
                f"{unidentified} cell{'s' if unidentified != 1 else ''} left unidentified: "
                "review before signing.",
            )
        )
    if wbc_cells < min_reliable_wbc:
        flags.append(
            Flag(
                "low_count",
                f"Only {wbc_cells} leukocyte{'s' if wbc_cells != 1 else ''} counted (under "
                f"{min_reliable_wbc}): too few for a reliable differential.",
            )
        )
    total = sum(row.count for row in rows if row.group != Group.NOT_CLASSED)
    return Differential(
        rows=rows, wbc_cells=wbc_cells, total_cells=total, flags=flags, corrected_wbc=corrected
    )
