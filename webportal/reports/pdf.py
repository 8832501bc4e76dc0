"""The printable report, rendered with ReportLab (pure Python, no system libraries)."""

from __future__ import annotations

import io
from datetime import datetime
from functools import cache
from typing import Any
from xml.sax.saxutils import escape

from django.utils import timezone
from reportlab.graphics.charts.barcharts import HorizontalBarChart
from reportlab.graphics.shapes import Drawing
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.pdfgen.canvas import Canvas
from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

from webportal.cases.batch_check import BatchCheckSummary, describe
from webportal.reports import wording
from webportal.reports.content import (
    END_OF_REPORT,
    ReportHeader,
    amendment_of,
    header_of,
)
from webportal.reports.differential import NRBC_CORRECTION
from webportal.reports.models import Report

NOT_VERIFIED = (
    "PRELIMINARY: not yet verified and signed by a pathologist. Machine counts for decision "
    "support only; not for clinical use."
)
ACCENT = colors.HexColor("#8b1e3f")


@cache
def _fonts() -> tuple[str, str]:
    # Vera ships with ReportLab and covers more than Latin-1 (names, en dashes, superscripts).
    pdfmetrics.registerFont(TTFont("Vera", "Vera.ttf"))
    pdfmetrics.registerFont(TTFont("VeraBd", "VeraBd.ttf"))
    return "Vera", "VeraBd"


def _when(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    return timezone.localtime(moment).strftime("%Y-%m-%d %H:%M %Z")


def _numbered(draw: Any) -> type[Canvas]:
    """A canvas that knows the page count when it draws each page's header and footer
    ("page x of y"): pages are kept until the document is saved, then drawn with the total."""

    class NumberedCanvas(Canvas):  # type: ignore[misc]  # ReportLab has no type hints
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._pages: list[dict[str, Any]] = []

        def showPage(self) -> None:
            self._pages.append(dict(self.__dict__))
            self._startPage()

        def save(self) -> None:
            total = len(self._pages)
            for state in self._pages:
                self.__dict__.update(state)
                draw(self, self._pageNumber, total)
                super().showPage()
            super().save()

    return NumberedCanvas


def _dash(value: Any) -> str:
    return str(value) if value not in (None, "") else "-"


def _lab_lines(header: ReportHeader) -> str:
    """The lab under the title: address, accreditation number, director."""
    lines = [" ".join(line.split()) for line in header.lab_address.splitlines()]
    parts = [", ".join(line for line in lines if line)]
    if header.lab_accreditation:
        parts.append(f"Accreditation no. {header.lab_accreditation}")
    if header.lab_director:
        parts.append(f"Laboratory director: {header.lab_director}")
    return " · ".join(part for part in parts if part)


def _chart(rows: list[dict[str, Any]], font: str) -> Drawing:
    wbc = [row for row in rows if row["group"] == "wbc"]
    height = 16 * len(wbc) + 30
    drawing = Drawing(170 * mm, height)
    chart = HorizontalBarChart()
    chart.x, chart.y = 28 * mm, 20
    chart.width, chart.height = 130 * mm, height - 30
    # Drawn bottom-up: reverse so the chart reads in the table's order.
    chart.data = [[row["percent"] or 0 for row in reversed(wbc)]]
    chart.categoryAxis.categoryNames = [row["label"] for row in reversed(wbc)]
    chart.categoryAxis.labels.fontName = font
    chart.categoryAxis.labels.fontSize = 8
    chart.valueAxis.valueMin = 0
    chart.valueAxis.valueMax = 100
    chart.valueAxis.valueStep = 20
    chart.valueAxis.labels.fontName = font
    chart.valueAxis.labels.fontSize = 7
    chart.bars[0].fillColor = ACCENT
    chart.barLabelFormat = "%.1f%%"
    chart.barLabels.fontName = font
    chart.barLabels.fontSize = 7
    chart.barLabels.nudge = 12
    drawing.add(chart)
    return drawing


def _check_line(check: BatchCheckSummary | None) -> str:
    """The batch check in the header: the verdict, with its score and limit when it has them."""
    if check is None:
        return "-"
    if check.score is None or check.threshold is None:
        return check.status_display
    return f"{check.status_display} (score {check.score:.2f}, limit {check.threshold:.2f})"


def render_report_pdf(*, report: Report) -> bytes:
    """The report as a PDF: header, differential (% and absolute), chart, flags, remarks,
    signature and the decision-support statement."""
    font, bold = _fonts()
    styles = getSampleStyleSheet()
    body = ParagraphStyle("body", parent=styles["BodyText"], fontName=font, fontSize=9, leading=12)
    small = ParagraphStyle("small", parent=body, fontSize=8, leading=10, textColor=colors.grey)
    heading = ParagraphStyle("h", parent=styles["Heading2"], fontName=bold, fontSize=12)
    title = ParagraphStyle("t", parent=styles["Title"], fontName=bold, fontSize=16, alignment=0)
    banner = ParagraphStyle("b", parent=body, fontName=bold, textColor=ACCENT)
    critical_banner = ParagraphStyle(
        "c", parent=banner, fontSize=11, leading=14, textColor=colors.white,
        backColor=colors.HexColor("#9b1c1c"), borderPadding=4, spaceBefore=4, spaceAfter=6,
    )  # fmt: skip

    batch = report.batch
    case = batch.case
    lab = case.lab
    header = header_of(report)
    check = describe(batch)
    status = report.status_label.upper()
    show_absolute = report.wbc_count is not None
    cell = ParagraphStyle("cell", parent=body, fontSize=9, leading=11)

    def _p(text: str) -> Paragraph:
        return Paragraph(escape(text).replace("\n", "<br/>"), cell)

    born = (
        f"{header.birth_date.isoformat()} (age {header.age})"
        if header.birth_date is not None
        else "-"
    )
    rows: list[list[Any]] = [
        ["Patient id", header.patient_id or "-", "Name", _p(header.patient_name or "-")],
        ["Birth date", born, "Sex", header.sex_display or "-"],
        ["Specimen id", case.accession_number, "Specimen", _p(header.specimen_type or "-")],
        ["Collected", _when(header.collected_at), "Received", _when(header.received_at)],
        ["Requester", _p(header.requester or "-"), "Batch", f"#{batch.pk}"],
        [
            "Report",
            f"version {report.version}, {status}",
            "Model",
            _p(
                f"{report.model_version.name} (threshold "
                f"{wording.threshold_text(report.model_version.threshold)})"
            ),
        ],
        ["Signed by", _p(header.signer or "-"), "Issued", _when(header.issued_at)],
        [
            "WBC count",
            _p(
                f"{report.wbc_count} x10^9/L"
                + (
                    f"; corrected for NRBC {report.corrected_wbc_count} x10^9/L"
                    if report.corrected_wbc_count is not None
                    else ""
                )
            )
            if show_absolute
            else "not given",
            "Printed",
            _when(timezone.now()),
        ],
    ]
    if check is not None:
        rows.append(["Batch check", _p(_check_line(check)), "", ""])
    spans = [("SPAN", (1, r), (3, r)) for r in range(8, len(rows))]
    story: list[Any] = [
        Paragraph(escape(f"{lab.name}: white-cell differential"), title),
        *([Paragraph(escape(_lab_lines(header)), small)] if _lab_lines(header) else []),
        Spacer(1, 2 * mm),
        Table(
            rows,
            colWidths=[25 * mm, 60 * mm, 22 * mm, 63 * mm],
            style=TableStyle(
                [
                    ("FONT", (0, 0), (-1, -1), font, 9),
                    ("FONT", (0, 0), (0, -1), bold, 9),
                    ("FONT", (2, 0), (2, -1), bold, 9),
                    ("VALIGN", (0, 0), (-1, -1), "TOP"),
                    *spans,
                ]
            ),
        ),
        Spacer(1, 4 * mm),
    ]
    if not header.has_two_identifiers:
        story.append(
            Paragraph(
                "Only one patient identifier is on record: check the patient's identity "
                "before acting on this report.",
                banner,
            )
        )
    if report.superseded_by is not None:
        story.append(
            Paragraph(
                f"SUPERSEDED by version {report.superseded_by.version}: this version is kept "
                "for the record only.",
                banner,
            )
        )
    if not report.is_signed:
        story.append(Paragraph(NOT_VERIFIED, banner))
    if report.critical:
        story.append(
            Paragraph(
                escape(" ".join(wording.critical_messages(report))),
                critical_banner,
            )
        )
    story.append(Paragraph(escape(f"Verification: {wording.verification_line(report)}"), body))
    if report.below_minimum_reason:
        story.append(Paragraph(escape(wording.below_minimum_line(report)), banner))
    amendment = amendment_of(report)
    if amendment is not None:
        story += [
            Paragraph(
                escape(
                    f"AMENDED REPORT: replaces version {amendment.replaced_version}, issued "
                    f"{_when(amendment.replaced_issued_at)} by {amendment.replaced_signer}."
                ),
                banner,
            ),
            Paragraph(escape(f"Reason: {report.amendment_reason}"), body),
        ]
        if amendment.changes:
            story.append(
                Table(
                    [["Changed", f"v{amendment.replaced_version}", f"v{report.version}"]]
                    + [[c.what, _p(c.before), _p(c.after)] for c in amendment.changes],
                    hAlign="LEFT",
                    colWidths=[40 * mm, 60 * mm, 60 * mm],
                    style=TableStyle(
                        [
                            ("FONT", (0, 0), (-1, -1), font, 9),
                            ("FONT", (0, 0), (-1, 0), bold, 9),
                            ("LINEBELOW", (0, 0), (-1, 0), 0.6, colors.black),
                            ("VALIGN", (0, 0), (-1, -1), "TOP"),
                        ]
                    ),
                )
            )
        else:
            story.append(Paragraph("No value changed; the reason above is the amendment.", body))
    if check is not None and check.flagged:
        story += [
            Spacer(1, 2 * mm),
            Paragraph(escape(f"{check.headline.upper()}."), banner),
            Paragraph(escape(f"{check.explanation} {check.figures}"), body),
        ]

    columns = ["Class", "Count", "% WBC", "95% CI", "Reference %", "Flag"] + (
        ["x10^9/L", "Reference", "Flag"] if show_absolute else []
    )
    table: list[list[str]] = [columns]
    for row in report.differential:
        if row["group"] != "wbc":
            continue
        reference = f"{row['low']:g}-{row['high']:g}" if row.get("high") is not None else ""
        ci = (
            f"{row['ci_low']:.1f}-{row['ci_high']:.1f}"
            if row.get("ci_low") is not None and row.get("ci_high") is not None
            else ""
        )
        label = f"{row['label']} (CRITICAL)" if row.get("critical") else row["label"]
        line = [label, str(row["count"]), f"{row['percent']:.1f}", ci, reference, row["flag"]]
        if show_absolute:
            absolute_reference = (
                f"{row['absolute_low']:g}-{row['absolute_high']:g}"
                if row.get("absolute_high") is not None
                else ""
            )
            line += [
                "" if row["absolute"] is None else f"{row['absolute']:.2f}",
                absolute_reference,
                row.get("absolute_flag", ""),
            ]
        table.append(line)
    total = f"{report.percent_total:.1f}" if report.wbc_cells else ""
    table.append(["Leukocytes counted", str(report.wbc_cells), total]
                 + [""] * (len(columns) - 3))  # fmt: skip
    notes = {
        "per_100_wbc": "per 100 WBC",
        "apart": "counted apart",
        "unidentified": "left unidentified",
        "not_classed": "not a cell / not classed",
    }
    for row in report.differential:
        if row["group"] == "wbc":
            continue
        value = (
            f"{row['percent']:.1f} {notes[row['group']]}"
            if row["percent"] is not None
            else (notes[row["group"]])
        )
        table.append([row["label"], str(row["count"]), value] + [""] * (len(columns) - 3))
    wbc_rows = sum(1 for row in report.differential if row["group"] == "wbc")
    story += [
        Paragraph("Differential", heading),
        Table(
            table,
            hAlign="LEFT",
            colWidths=(
                [30 * mm, 12 * mm, 15 * mm, 22 * mm, 20 * mm, 9 * mm, 18 * mm, 22 * mm, 10 * mm]
                if show_absolute
                else [44 * mm, 15 * mm, 24 * mm, 24 * mm, 24 * mm, 10 * mm]
            ),
            style=TableStyle(
                [
                    ("FONT", (0, 0), (-1, -1), font, 9),
                    ("FONT", (0, 0), (-1, 0), bold, 9),
                    ("FONT", (0, wbc_rows + 1), (-1, wbc_rows + 1), bold, 9),
                    ("LINEBELOW", (0, 0), (-1, 0), 0.6, colors.black),
                    ("LINEABOVE", (0, wbc_rows + 1), (-1, wbc_rows + 1), 0.6, colors.black),
                    ("ALIGN", (1, 0), (3, -1), "RIGHT"),
                    ("ALIGN", (6, 0), (6, -1), "RIGHT"),
                    ("TEXTCOLOR", (0, wbc_rows + 2), (-1, -1), colors.HexColor("#444444")),
                    ("ALIGN", (2, wbc_rows + 2), (-1, -1), "LEFT"),
                ]
                # Rows outside the % of WBC: each one's note spans the remaining columns.
                + [("SPAN", (2, r), (-1, r)) for r in range(wbc_rows + 2, len(table))]
            ),
        ),
        *(
            [Paragraph(escape(f"{wording.ROUNDING_NOTE} {wording.INTERVAL_NOTE}"), small)]
            if report.wbc_cells
            else []
        ),
        *(
            [
                Paragraph(
                    escape(
                        f"Absolute counts use the WBC count corrected for nucleated red cells, "
                        f"{report.corrected_wbc_count} x10^9/L (measured {report.wbc_count}): "
                        f"{NRBC_CORRECTION}."
                    ),
                    small,
                )
            ]
            if report.corrected_wbc_count is not None
            else []
        ),
        Spacer(1, 3 * mm),
        _chart(report.differential, font),
        Paragraph("Flags", heading),
    ]
    if report.flags:
        story += [Paragraph(escape(f"- {flag['message']}"), body) for flag in report.flags]
    else:
        story.append(Paragraph("None.", body))
    for label, text in [
        ("Comment", report.comment),
        ("Morphology", report.morphology),
        # An amendment's reason is printed with what it changed, above.
        ("Reason for amendment", report.amendment_reason if amendment is None else ""),
    ]:
        if text:
            story += [
                Paragraph(label, heading),
                Paragraph(escape(text).replace("\n", "<br/>"), body),
            ]
    story += [
        Spacer(1, 6 * mm),
        Paragraph(escape(wording.decision_support(report)), small),
        Spacer(1, 4 * mm),
        Paragraph(f"- {END_OF_REPORT} -", ParagraphStyle("end", parent=body, alignment=1)),
    ]

    buffer = io.BytesIO()
    document = SimpleDocTemplate(
        buffer,
        pagesize=A4,
        leftMargin=18 * mm,
        rightMargin=18 * mm,
        topMargin=16 * mm,
        bottomMargin=16 * mm,
        title=f"Differential {case.accession_number} v{report.version}",
        author=lab.name,
        subject="White-cell differential",
        # The same version gives the same bytes (no creation time or random document id), so
        # the PDF inside a FHIR Bundle and its ETag stay put until the report changes.
        invariant=True,
    )

    def frame(canvas: Canvas, page: int, pages: int) -> None:
        """Every page: the patient's two identifiers, the specimen, its collection and the
        report's issue on top; the report and page x of y at the foot."""
        canvas.saveState()
        canvas.setFont(font, 7.5)
        canvas.drawString(18 * mm, A4[1] - 10 * mm, header.identifiers)
        # ISO 15189:2022 7.4.1.6: the collection date and the issue date on every page too.
        canvas.drawString(
            18 * mm,
            A4[1] - 13.5 * mm,
            f"Specimen {case.accession_number} · collected {_when(header.collected_at)} · "
            f"issued {_when(header.issued_at) if header.issued_at else 'not yet (preliminary)'}",
        )
        canvas.setFont(font, 7)
        canvas.setFillColor(colors.grey)
        canvas.drawString(
            18 * mm,
            9 * mm,
            f"{case.accession_number} - report v{report.version} ({report.status_label}) - "
            f"page {page} of {pages}",
        )
        canvas.restoreState()

    document.build(story, canvasmaker=_numbered(frame))
    return buffer.getvalue()
