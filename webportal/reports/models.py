"""Reports: a batch's differential, versioned. A preliminary report follows the reviews; a
signed one is a frozen snapshot; an amendment is a new version and the old one stays readable,
marked superseded."""

from __future__ import annotations

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models.functions import Lower


class Report(models.Model):
    class Status(models.TextChoices):
        PRELIMINARY = "preliminary", "Preliminary"
        FINAL = "final", "Final"
        AMENDED = "amended", "Amended"

    batch = models.ForeignKey("cases.Batch", on_delete=models.PROTECT, related_name="reports")
    version = models.PositiveIntegerField(default=1)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.PRELIMINARY)
    model_version = models.ForeignKey(
        "cases.ModelVersion", on_delete=models.PROTECT, related_name="+"
    )
    # [{"label", "group", "count", "percent", "absolute", "low", "high", "flag"}, ...] in the
    # model's class order, then "unidentified" and "not classed" (reports.differential.Row).
    differential = models.JSONField()
    # Cells with a label (not-classed ones excluded), and leukocytes (the % denominator).
    total_cells = models.PositiveIntegerField()
    wbc_cells = models.PositiveIntegerField(default=0)
    # [{"code", "message"}, ...] (reports.differential.Flag)
    flags = models.JSONField(default=list)
    # The patient's white-cell count from the analyser, x10^9/L: gives absolute counts.
    wbc_count = models.DecimalField(
        "WBC count (x10^9/L)",
        max_digits=6,
        decimal_places=2,
        null=True,
        blank=True,
        validators=[MinValueValidator(0)],
    )
    # The WBC count corrected for nucleated red cells (reports.differential.corrected_wbc),
    # when erythroblasts were counted and a WBC count given: the absolute counts use it.
    corrected_wbc_count = models.DecimalField(
        "WBC count corrected for NRBC (x10^9/L)",
        max_digits=6,
        decimal_places=2,
        null=True,
        blank=True,
    )
    # What the report said of its lab, patient, specimen, requester and signer when it was
    # signed (reports.content.ReportHeader), frozen with the signature; {} while preliminary
    # (the header then follows the records).
    header = models.JSONField(default=dict, blank=True)
    comment = models.TextField(blank=True)
    morphology = models.TextField("morphology remarks", blank=True)
    amendment_reason = models.TextField(blank=True)
    # Why it was signed with fewer leukocytes than the lab's minimum (printed on the report).
    below_minimum_reason = models.TextField(blank=True)
    # A category the lab marks critical (blast by default) was counted (reports.vocabulary).
    critical = models.BooleanField(default=False)
    # Of the cells counted: how many a person's latest review labelled, and how many the model
    # labelled above its threshold with no review (selectors.current_label). None: a version
    # written before these were counted (not recorded: never shown as verified).
    person_verified_cells = models.PositiveIntegerField(null=True, blank=True)
    model_accepted_cells = models.PositiveIntegerField(null=True, blank=True)
    signed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    signed_at = models.DateTimeField(null=True, blank=True)
    superseded_by = models.OneToOneField(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="supersedes"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-version"]
        constraints = [
            models.UniqueConstraint(fields=["batch", "version"], name="one_report_per_version")
        ]

    def __str__(self) -> str:
        return f"Report v{self.version} of batch {self.batch_id}"

    @property
    def is_signed(self) -> bool:
        return self.signed_at is not None

    @property
    def is_superseded(self) -> bool:
        return self.superseded_by_id is not None

    @property
    def status_label(self) -> str:
        return "superseded" if self.is_superseded else self.get_status_display().lower()

    @property
    def labelled_cells(self) -> int:
        """Cells with a label (a class, a category, or not classed): all but unidentified."""
        return sum(int(row["count"]) for row in self.differential if row["label"] != "unidentified")

    @property
    def fully_verified(self) -> bool:
        """Every labelled cell's label is a person's (none accepted by the model alone)."""
        return (
            self.person_verified_cells is not None
            and 0 < self.labelled_cells == self.person_verified_cells
        )

    @property
    def percent_total(self) -> float:
        """The leukocyte column as shown (each value rounded on its own: 99.9 to 100.1)."""
        from webportal.reports.differential import Group, shown_total

        return shown_total(row["percent"] for row in self.differential
                           if row.get("group") == Group.WBC)  # fmt: skip


class ReferenceRange(models.Model):
    """A lab's reference interval for one class: % of leukocytes and, optionally, the absolute
    count (x10^9/L), for one sex ("" any) and one age band [age_from_years, age_to_years)
    (to None: no upper limit). Absent classes use the adult defaults in reports.differential;
    services.reference_ranges_for picks the most specific row that fits the patient."""

    lab = models.ForeignKey("accounts.Lab", on_delete=models.CASCADE, related_name="+")
    label = models.CharField(max_length=100)
    sex = models.CharField(max_length=10, blank=True)
    age_from_years = models.PositiveSmallIntegerField(default=0)
    age_to_years = models.PositiveSmallIntegerField(null=True, blank=True)
    low_percent = models.FloatField(validators=[MinValueValidator(0)])
    high_percent = models.FloatField(validators=[MinValueValidator(0)])
    low_absolute = models.FloatField(null=True, blank=True, validators=[MinValueValidator(0)])
    high_absolute = models.FloatField(null=True, blank=True, validators=[MinValueValidator(0)])
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["label", "sex", "age_from_years"]
        constraints = [
            models.UniqueConstraint(
                fields=["lab", "label", "sex", "age_from_years"],
                name="one_reference_range_per_class_sex_and_age",
            ),
            models.CheckConstraint(
                condition=models.Q(low_percent__lte=models.F("high_percent")),
                name="reference_range_low_not_above_high",
            ),
            models.CheckConstraint(
                condition=models.Q(low_absolute__isnull=True)
                | models.Q(high_absolute__isnull=True)
                | models.Q(low_absolute__lte=models.F("high_absolute")),
                name="reference_range_absolute_low_not_above_high",
            ),
            models.CheckConstraint(
                condition=models.Q(age_to_years__isnull=True)
                | models.Q(age_to_years__gt=models.F("age_from_years")),
                name="reference_range_age_band_not_empty",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.label} {self.low_percent:g}-{self.high_percent:g}% ({self.lab_id})"


class CellCategory(models.Model):
    """A category of a lab's cell vocabulary (reports.vocabulary): one the lab added beside the
    model's classes and the defaults, or its critical mark on one of those."""

    class Group(models.TextChoices):
        WBC = "wbc", "Leukocyte (in the % denominator)"
        PER_100_WBC = "per_100_wbc", "Counted apart, per 100 leukocytes"
        APART = "apart", "Counted apart"
        NOT_COUNTED = "not_classed", "Not counted (artefact / not a cell)"

    lab = models.ForeignKey("accounts.Lab", on_delete=models.CASCADE, related_name="+")
    label = models.CharField(max_length=100)
    group = models.CharField(max_length=12, choices=Group.choices, default=Group.WBC)
    loinc = models.CharField("LOINC code (/100 leukocytes)", max_length=10, blank=True)
    critical = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(
                "lab", Lower("label"), name="one_cell_category_per_label_and_lab"
            )
        ]

    def __str__(self) -> str:
        return f"{self.label} ({self.lab_id})"


class ReportPolicy(models.Model):
    """A lab's rules for signing (lab admins): the minimum of leukocytes (CLSI H20-A2: 100),
    and whether every cell must be verified by a person first (ICSH review and
    recommendations on digital morphology analysers, Kratz et al. 2019, doi:10.1111/ijlh.13042:
    a skilled morphologist remains essential to verify the pre-classification)."""

    lab = models.OneToOneField("accounts.Lab", on_delete=models.CASCADE, related_name="+")
    min_leukocytes = models.PositiveIntegerField(
        "minimum of leukocytes to sign", default=100, validators=[MinValueValidator(1)]
    )
    every_cell_verified = models.BooleanField(
        "every cell verified by a person before signing", default=False
    )
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"Report policy of lab {self.lab_id}"
