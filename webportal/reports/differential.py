"""The differential as a lab reports it: pure arithmetic, no database.

- The categories come from the lab's vocabulary (`webportal.reports.vocabulary`): the model's
  classes plus morphology categories the model does not know (blast, band neutrophil, ...).
- Percentages are of leukocytes (WBC). Erythroblasts (nucleated red cells) and smudge cells
  are reported per 100 WBC, platelets apart; unidentified cells, artefacts and cells marked
  "not classed" are outside the denominator and shown apart.
- Each shown value is rounded on its own, half up, to one decimal (`shown`, the one rounding
  function of every output: page, PDF, JSON, FHIR), so the leukocyte column may add up to 99.9
  or 100.1; flags are decided on the exact, unrounded value (CLSI H20-A2 reports each class
  as counted; forcing the column to 100.0 moved values across reference limits).
- Each leukocyte percentage carries its exact binomial (Clopper-Pearson) 95 % confidence
  interval, the interval Rümke's table gives (CLSI H20-A2, Reference leukocyte (WBC)
  differential count).
- With a WBC count (x10^9/L) each leukocyte class also gets an absolute count, flagged
  against its own absolute reference interval. When nucleated red cells (erythroblasts) are
  counted the WBC count is first corrected for them (corrected_wbc: the analyser counts them
  as leukocytes), and the absolute counts use the corrected count.
- Flags: a critical category found, a class outside the lab's reference range, immature cells
  present, unidentified cells left, fewer leukocytes counted than the lab's minimum.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction
from typing import Any

# The words live in core (cases and reports share them); named here too for the arithmetic.
from webportal.core.labels import NOT_CLASSED as NOT_CLASSED
from webportal.core.labels import UNIDENTIFIED as UNIDENTIFIED

# Classes outside the leukocyte denominator, by name (case-insensitive; classes come from the
# checkpoint, these are the names the shipped models use and the lab vocabulary's defaults).
PER_100_WBC = frozenset({"erythroblast", "smudge cell"})
APART = frozenset({"platelet"})
NOT_COUNTED = frozenset({"artefact"})
IMMATURE = frozenset({"ig", "erythroblast", "promyelocyte", "myelocyte", "metamyelocyte"})
# The lab's minimum of leukocytes to sign without a stated reason, unless the lab sets its own
# (CLSI H20-A2 takes 100 cells as the smallest routine count; 200 halves its imprecision).
MIN_RELIABLE_WBC = 100
# The confidence of the interval each percentage carries.
CONFIDENCE = 0.95

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
# Nucleated red cells: what the WBC count is corrected for (smudge cells, also counted per
# 100 WBC, are leukocytes the analyser counted rightly).
NRBC_LABELS = frozenset({"erythroblast"})
# Correct the WBC count from this many NRBC per 100 WBC (a lab sets its own, or never).
NRBC_CORRECTION_FROM = 5
# The textbook correction (Rodak's Diagnostic Hematology; docs/REPORTS.md has the sources).
NRBC_CORRECTION = "WBC corrected for NRBC = WBC x 100 / (100 + NRBC per 100 WBC)"


class Group:
    WBC = "wbc"
    PER_100_WBC = "per_100_wbc"
    APART = "apart"
    UNIDENTIFIED = "unidentified"
    # Not in any count: "not classed" and the categories a lab counts nowhere (artefacts).
    NOT_CLASSED = "not_classed"


# The groups a lab may give a category of its own (the others are the system's).
CATEGORY_GROUPS = {
    Group.WBC: "leukocyte (in the % denominator)",
    Group.PER_100_WBC: "counted apart, per 100 leukocytes",
    Group.APART: "counted apart",
    Group.NOT_CLASSED: "not counted (artefact / not a cell)",
}


@dataclass(frozen=True)
class Category:
    """One label a reviewer may give a cell (webportal.reports.vocabulary builds the list)."""

    label: str
    group: str = Group.WBC
    loinc: str = ""  # LOINC code of the "/100 leukocytes" result, "" where none
    loinc_display: str = ""
    critical: bool = False  # found at all, the report is critical
    in_model: bool = False  # one of the model's classes (the only ones it is ever taught)


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
    # The percentage's exact binomial 95 % interval (leukocyte rows with leukocytes counted).
    ci_low: float | None = None
    ci_high: float | None = None
    loinc: str = ""
    critical: bool = False  # a critical category with cells counted
    # The absolute count's own reference interval (x10^9/L) and flag, when both are known.
    absolute_low: float | None = None
    absolute_high: float | None = None
    absolute_flag: str = ""


@dataclass(frozen=True)
class Flag:
    code: str  # critical | out_of_range | immature | unidentified | low_count | no_leukocytes
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

    @property
    def critical(self) -> bool:
        return any(row.critical for row in self.rows)

    def rows_json(self) -> list[dict[str, Any]]:
        return [asdict(row) for row in self.rows]

    def flags_json(self) -> list[dict[str, str]]:
        return [asdict(flag) for flag in self.flags]


def group_of(label: str) -> str:
    name = label.lower()
    if name == UNIDENTIFIED:
        return Group.UNIDENTIFIED
    if name == NOT_CLASSED or name in NOT_COUNTED:
        return Group.NOT_CLASSED
    if name in PER_100_WBC:
        return Group.PER_100_WBC
    if name in APART:
        return Group.APART
    return Group.WBC


def shown(value: Fraction | Decimal | float | int, places: int = 1) -> float:
    """The one rounding of every shown number (page, PDF, JSON, FHIR): half up, `places`
    decimals, each value on its own. 11/27 = 40.74 % is 40.7; 3/146 = 2.05 % is 2.1."""
    exact = value if isinstance(value, Fraction) else Fraction(Decimal(str(value)))
    decimal = Decimal(exact.numerator) / Decimal(exact.denominator)
    return float(decimal.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP))


def shown_total(percents: Iterable[float | None]) -> float:
    """The sum of values already shown (so it may read 99.9 or 100.1), itself shown."""
    return shown(sum((Fraction(Decimal(str(p))) for p in percents if p is not None), Fraction(0)))


def clopper_pearson(count: int, total: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The exact binomial interval of count/total (a proportion, 0-1): Clopper and Pearson's,
    which Rümke's table for the differential count tabulates (CLSI H20-A2). The beta
    quantiles come from SciPy's inverse regularized incomplete beta function."""
    from scipy.special import betaincinv

    if total <= 0 or not 0 <= count <= total:
        raise ValueError(f"No interval for {count} of {total}.")
    alpha = 1 - confidence
    low = 0.0 if count == 0 else float(betaincinv(count, total - count + 1, alpha / 2))
    high = 1.0 if count == total else float(betaincinv(count + 1, total - count, 1 - alpha / 2))
    return low, high


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


def largest_remainder(counts: Sequence[int], *, decimals: int = 1) -> list[float]:
    """Percentages of sum(counts) with `decimals` places that add up to exactly 100.

    No longer how reports round (each value is rounded on its own, `shown`); kept for the
    migration that filled in the reports written before (reports/migrations/0002).
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


def _categories(classes: Sequence[str], categories: Sequence[Category]) -> list[Category]:
    """The vocabulary to count by: `categories` when given, else the model's classes alone."""
    if categories:
        return list(categories)
    return [Category(label, group_of(label), in_model=True) for label in classes]


def build_differential(
    *,
    classes: Sequence[str] = (),
    counts: Mapping[str, int],
    categories: Sequence[Category] = (),
    wbc_count: Decimal | None = None,
    reference_ranges: Mapping[str, tuple[float, float]] | None = None,
    absolute_ranges: Mapping[str, tuple[float, float]] | None = None,
    min_reliable_wbc: int = MIN_RELIABLE_WBC,
    nrbc_correction_from: int | None = NRBC_CORRECTION_FROM,
) -> Differential:
    """The differential of `counts` (current label -> cells) by `categories` (the lab's
    vocabulary: webportal.reports.vocabulary), or by the model's `classes` alone.

    The model's classes always have a row; a category of the lab's own has one when cells were
    given it.
    """
    ranges = {
        label.lower(): bounds
        for label, bounds in (
            DEFAULT_REFERENCE_RANGES if reference_ranges is None else reference_ranges
        ).items()
    }
    vocabulary = [
        category
        for category in _categories(classes, categories)
        if category.in_model or counts.get(category.label, 0)
    ]
    wbc_cells = sum(counts.get(c.label, 0) for c in vocabulary if c.group == Group.WBC)
    absolute_bounds = {
        label.lower(): bounds
        for label, bounds in (
            DEFAULT_ABSOLUTE_RANGES if absolute_ranges is None else absolute_ranges
        ).items()
    }
    nrbc = sum(counts.get(c.label, 0) for c in vocabulary if c.label.lower() in NRBC_LABELS)
    nrbc_share = nrbc_per_100_wbc(nrbc=nrbc, wbc_cells=wbc_cells)
    if nrbc_correction_from is None or nrbc_share is None or nrbc_share < nrbc_correction_from:
        nrbc = 0  # below the lab's threshold (or never): the WBC count is used as measured
    exact_wbc = (
        corrected_wbc(wbc_count=wbc_count, nrbc=nrbc, wbc_cells=wbc_cells)
        if wbc_count is not None
        else None
    )
    corrected = (
        Decimal(str(shown(exact_wbc, 2))) if exact_wbc is not None and nrbc and wbc_cells else None
    )

    rows: list[Row] = []
    flags: list[Flag] = []
    critical: list[str] = []
    for category in vocabulary:
        label, group = category.label, category.group
        count = counts.get(label, 0)
        is_critical = category.critical and count > 0
        if group == Group.WBC:
            exact = Fraction(100 * count, wbc_cells) if wbc_cells else None
            percent = shown(exact) if exact is not None else 0.0
            ci_low = ci_high = None
            if wbc_cells:
                low_p, high_p = clopper_pearson(count, wbc_cells)
                ci_low, ci_high = shown(100 * low_p), shown(100 * high_p)
            exact_absolute = (
                exact_wbc * count / wbc_cells if exact_wbc is not None and wbc_cells else None
            )
            absolute = None if exact_absolute is None else shown(exact_absolute, 2)
            bounds = absolute_bounds.get(label.lower())
            absolute_flag = "" if exact_absolute is None else _absolute_flag(exact_absolute, bounds)
            if absolute_flag and bounds is not None and absolute is not None:
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
            # Decided on the exact value: 3 of 146 basophils (2.05 %) is above 0-2 %.
            if exact is not None and high is not None and exact > Fraction(str(high)):
                flag = "H"
            elif exact is not None and low is not None and exact < Fraction(str(low)):
                flag = "L"
            if flag:
                side = "above" if flag == "H" else "below"
                flags.append(
                    Flag(
                        "out_of_range",
                        f"{label} {percent:.1f}% is {side} the reference range {low:g}-{high:g}%.",
                    )
                )
            if is_critical:
                critical.append(f"{label} {count} ({percent:.1f}% of leukocytes)")
            rows.append(
                Row(label, group, count, percent, absolute, low, high, flag, ci_low, ci_high,
                    category.loinc, is_critical,
                    absolute_low=bounds[0] if bounds is not None else None,
                    absolute_high=bounds[1] if bounds is not None else None,
                    absolute_flag=absolute_flag)
            )  # fmt: skip
        elif group == Group.PER_100_WBC:
            per_100 = shown(Fraction(100 * count, wbc_cells)) if wbc_cells else None
            if is_critical:
                critical.append(f"{label} {count}")
            rows.append(Row(label, group, count, per_100, loinc=category.loinc,
                            critical=is_critical))  # fmt: skip
        else:
            if is_critical:
                critical.append(f"{label} {count}")
            rows.append(Row(label, group, count, None, loinc=category.loinc,
                            critical=is_critical))  # fmt: skip
    unidentified = counts.get(UNIDENTIFIED, 0)
    not_classed = counts.get(NOT_CLASSED, 0)
    rows.append(Row(UNIDENTIFIED, Group.UNIDENTIFIED, unidentified, None))
    rows.append(Row(NOT_CLASSED, Group.NOT_CLASSED, not_classed, None))

    if critical:
        flags.insert(0, Flag("critical", f"CRITICAL RESULT: {', '.join(critical)}."))
    immature = [
        f"{c.label} {counts.get(c.label, 0)}"
        for c in vocabulary
        if c.label.lower() in IMMATURE and counts.get(c.label, 0)
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
    if wbc_cells == 0:
        flags.append(
            Flag("no_leukocytes", "No leukocyte counted: there is no differential to report.")
        )
    elif wbc_cells < min_reliable_wbc:
        flags.append(
            Flag(
                "low_count",
                f"Only {wbc_cells} leukocyte{'s' if wbc_cells != 1 else ''} counted (under "
                f"{min_reliable_wbc}): too few for a reliable differential; see each "
                "percentage's 95% interval.",
            )
        )
    total = sum(row.count for row in rows if row.group != Group.NOT_CLASSED)
    return Differential(
        rows=rows, wbc_cells=wbc_cells, total_cells=total, flags=flags, corrected_wbc=corrected
    )
