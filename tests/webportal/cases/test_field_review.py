"""A field's page: every box drawn and labelled; a reviewer adds a missed cell or discards one."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from django.test import Client
from django.urls import reverse

from tests.factories import MembershipFactory
from webportal.accounts.models import Role
from webportal.audit.models import AuditEvent
from webportal.cases import services
from webportal.cases.models import Cell, Image, ModelVersion, Review
from webportal.pipeline import batch_job
from webportal.reports import reviews
from webportal.reports.differential import NOT_CLASSED

pytestmark = pytest.mark.django_db

FIELDS = Path(__file__).resolve().parents[3] / "samples" / "fields"


@pytest.fixture
def field(tiny_model: ModelVersion, case) -> Image:
    """BloodImage_00044 (two eosinophils) uploaded, located and classified: the batch done."""
    data = io.BytesIO((FIELDS / "BloodImage_00044.jpg").read_bytes())
    batch = services.submit_batch(
        case=case, created_by=None, files=[("BloodImage_00044.jpg", data)]
    )
    batch_job.process_batch(batch_id=batch.pk)
    return batch.images.get()


def report_total(image: Image) -> int:
    return image.batch.reports.order_by("-id")[0].total_cells


def test_the_field_page_draws_every_box_with_its_label(field: Image, member, client: Client):
    client.force_login(member.user)
    page = client.get(reverse("cases:field_detail", args=[field.pk])).content.decode()
    cells = list(field.cells.all())
    assert len(cells) == 2
    for cell in cells:
        x, y, w, h = cell.box or []
        assert f'<rect x="{x}" y="{y}" width="{w}" height="{h}"/>' in page
        assert reverse("cases:cell_crop", args=[cell.pk]) in page
    label = cells[0].predictions.get().label
    assert f">{label}</text>" in page or ">unidentified</text>" in page


def test_a_cell_crop_is_served_as_the_classifier_saw_it(field: Image, member, client: Client):
    client.force_login(member.user)
    cell = field.cells.all()[0]
    response = client.get(reverse("cases:cell_crop", args=[cell.pk]))
    assert response.status_code == 200
    assert response["Content-Type"] == "image/png"
    assert response.content.startswith(b"\x89PNG")


def test_a_reviewer_discards_a_false_cell_out_of_the_differential(
    field: Image, member, client: Client
):
    before = report_total(field)
    cell = field.cells.all()[0]
    client.force_login(member.user)
    response = client.post(
        reverse("cases:field_detail", args=[field.pk]), {"action": "discard", "cell": cell.pk}
    )
    assert response.status_code == 302
    assert cell.reviews.get().label == NOT_CLASSED
    assert report_total(field) == before - 1
    event = AuditEvent.objects.filter(action="cell.reviewed").get()
    assert event.after == {"label": NOT_CLASSED}


def test_a_reviewer_adds_a_missed_cell_by_its_box_counted_and_audited(
    field: Image, member, client: Client
):
    before = report_total(field)
    client.force_login(member.user)
    label = field.batch.model_version.classes[0]
    response = client.post(
        reverse("cases:field_detail", args=[field.pk]),
        {"action": "add", "x": 300, "y": 40, "w": 90, "h": 80, "label": label},
    )
    assert response.status_code == 302
    added = field.cells.get(origin=Cell.Origin.REVIEWER)
    assert added.box == [300, 40, 90, 80]
    assert added.reviews.get().label == label
    assert report_total(field) == before + 1
    actions = set(AuditEvent.objects.values_list("action", flat=True))
    assert {"cell.added", "cell.reviewed"} <= actions


@pytest.mark.parametrize(
    ("box", "message"),
    [((600, 400, 100, 100), "inside the field"), ((10, 10, 3, 40), "at least")],
)
def test_a_box_outside_the_field_or_too_small_is_refused(field: Image, member, box, message):
    label = field.batch.model_version.classes[0]
    with pytest.raises(services.ServiceError, match=message):
        reviews.add_missed_cell(actor=member.user, image=field, box=box, label=label)
    assert not field.cells.filter(origin=Cell.Origin.REVIEWER).exists()


def test_an_unknown_label_adds_no_cell(field: Image, member):
    with pytest.raises(services.ServiceError, match=r"not in the lab.s cell vocabulary"):
        reviews.add_missed_cell(
            actor=member.user, image=field, box=(300, 40, 90, 80), label="dragon"
        )
    assert not Cell.objects.filter(origin=Cell.Origin.REVIEWER).exists()
    assert not AuditEvent.objects.filter(action="cell.added").exists()


def test_an_integrator_may_not_add_cells_in_the_portal(field: Image):
    integrator = MembershipFactory.create(lab=field.batch.case.lab, role=Role.INTEGRATOR).user
    label = field.batch.model_version.classes[0]
    with pytest.raises(Exception, match="add cells"):
        reviews.add_missed_cell(actor=integrator, image=field, box=(300, 40, 90, 80), label=label)
    assert not Review.objects.exists()


def test_a_bad_request_says_why_and_changes_nothing(field: Image, member, client: Client):
    client.force_login(member.user)
    response = client.post(
        reverse("cases:field_detail", args=[field.pk]),
        {"action": "add", "x": "left", "y": 1, "w": 1, "h": 1},
        follow=True,
    )
    assert response.status_code == 200
    assert not field.cells.filter(origin=Cell.Origin.REVIEWER).exists()
    assert len(list(response.context["messages"])) == 1
