from __future__ import annotations

import pytest
from django.db import DatabaseError, connection, transaction
from django.test.utils import CaptureQueriesContext

from tests.factories import CaseFactory, LabFactory, UserFactory
from webportal.audit.models import Action, AppendOnlyError, AuditEvent
from webportal.audit.services import record_event, record_events

pytestmark = pytest.mark.django_db


def test_an_event_names_who_what_which_object_and_the_values_before_and_after() -> None:
    lab = LabFactory.create()
    user = UserFactory.create()
    case = CaseFactory.create(lab=lab)
    event = record_event(
        lab=lab,
        actor=user,
        action=Action.CASE_CREATED,
        obj=case,
        before={"note": ""},
        after={"note": "fever"},
    )
    event.refresh_from_db()
    assert (event.lab, event.actor, event.action) == (lab, user, "case.created")
    assert (event.object_type, event.object_id) == ("cases.case", str(case.pk))
    assert (event.before, event.after) == ({"note": ""}, {"note": "fever"})
    assert event.created_at is not None
    assert event.action_label == "Case created"


def test_events_can_be_neither_changed_nor_deleted_through_the_orm() -> None:
    case = CaseFactory.create()
    event = record_event(lab=case.lab, actor=None, action="case.created", obj=case)
    event.action = "something.else"
    with pytest.raises(AppendOnlyError):
        event.save()
    with pytest.raises(AppendOnlyError):
        event.delete()
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.filter(pk=event.pk).update(action="x")
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.all().delete()
    assert AuditEvent.objects.get(pk=event.pk).action == "case.created"


@pytest.mark.skipif(
    connection.vendor != "postgresql", reason="the trigger is PostgreSQL's (CI runs there)"
)
@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE audit_auditevent SET action = 'forged' WHERE id = %s",
        "DELETE FROM audit_auditevent WHERE id = %s",
    ],
)
def test_postgresql_itself_refuses_to_change_or_remove_an_event(sql: str) -> None:
    case = CaseFactory.create()
    event = record_event(lab=case.lab, actor=None, action="case.created", obj=case)
    with (
        pytest.raises(DatabaseError, match="append-only"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(sql, [event.pk])
    assert AuditEvent.objects.get(pk=event.pk).action == "case.created"


def test_values_that_json_cannot_hold_natively_are_stored_as_text() -> None:
    case = CaseFactory.create()
    event = record_event(
        lab=case.lab, actor=None, action="case.created", obj=case, after={"at": case.created_at}
    )
    event.refresh_from_db()
    assert event.after is not None
    assert event.after["at"].startswith(str(case.created_at.year))


def test_an_unknown_action_is_kept_and_shown_by_its_name() -> None:
    case = CaseFactory.create()
    event = record_event(lab=case.lab, actor=None, action="export.fhir", obj=case)
    assert event.action_label == "export.fhir"


def test_many_events_of_one_action_are_written_in_one_insert() -> None:
    cases = CaseFactory.create_batch(3)
    with CaptureQueriesContext(connection) as captured:
        events = record_events(
            lab=cases[0].lab,
            actor=None,
            action="case.touched",
            changes=[(case, {"n": i}, {"n": i + 1}) for i, case in enumerate(cases)],
        )
    assert len(captured.captured_queries) == 1
    assert len(events) == 3
    stored = AuditEvent.objects.filter(action="case.touched").order_by("object_id")
    assert [(e.object_type, e.object_id, e.after) for e in stored] == [
        ("cases.case", str(case.pk), {"n": i + 1}) for i, case in enumerate(cases)
    ]
