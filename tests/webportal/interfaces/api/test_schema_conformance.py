"""Schemathesis against /api/schema/: generated requests to every operation, with every check.

All of schemathesis's checks run (its defaults, nothing excluded): no 5xx; status code, content
type, headers and body as documented; a schema-violating request refused (4xx) and a
schema-valid one accepted (negative_data_rejection, positive_data_acceptance); a missing
required header and an undocumented method refused; Allow headers; ignored authentication.
Phases: the schema's examples, coverage (boundary values, each invalid variant) and fuzzing,
positive and negative. Bounded: a few fuzzed examples per operation, no shrinking, a fixed seed,
so the whole test stays well under two minutes on a loaded two-core machine.

Requests go through the WSGI application in this process, so they see the test's database (a
token, a case, a processed batch with a report) without a server. Schema-valid requests name
those objects' ids (a random id is only a 404), so their answers' bodies are checked too.
"""

from __future__ import annotations

import io
import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import pytest
import schemathesis
from django.core.cache import cache
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, Phase, settings
from schemathesis import GenerationMode, checks

from tests.conftest import EXAMPLE_PUBLIC_ADDRESS, noisy_jpeg_bytes
from webportal.api import tokens
from webportal.cases import services
from webportal.cases.models import Cell, ModelVersion
from webportal.notifications import outbound
from webportal.pipeline import batch_job

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _keep_the_test_connection_open() -> Iterator[None]:
    # As Django's test client does: a request must not close the test's database connection.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.fixture(autouse=True)
def _every_name_is_public(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without DNS here, a generated webhook host (`0.com`) resolves to a public address, as
    it would on a network; address literals still go through the outbound guard as they are."""
    real = outbound.resolve

    def resolve(host: str, port: int) -> list[outbound.IPAddress]:
        try:
            ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            return [ipaddress.ip_address(EXAMPLE_PUBLIC_ADDRESS)]
        return real(host, port)

    monkeypatch.setattr(outbound, "resolve", resolve)


@dataclass(frozen=True)
class Seeded:
    token: str
    ids: dict[str, int]


@pytest.fixture
def lab(member, tiny_model: ModelVersion) -> Seeded:
    """A read-write token whose lab has a case, a processed batch and its report."""
    cache.clear()  # the throttle's counters
    case = services.create_case(
        lab=member.lab, created_by=None, accession_number="SCHEMA-1", patient_external_id="M-1"
    )
    batch = services.submit_batch(
        case=case, created_by=None, files=[("a.jpg", io.BytesIO(noisy_jpeg_bytes()))]
    )
    batch_job.process_batch(batch_id=batch.pk)
    cell = Cell.objects.filter(image__batch=batch).first()
    assert cell is not None
    return Seeded(
        token=tokens.issue_token(lab=member.lab, username="schema-lis").plaintext,
        ids={"case_id": case.pk, "batch_id": batch.pk, "cell_id": cell.pk},
    )


# Loaded once, when the tests are collected (the schema needs no database).
schema = schemathesis.openapi.from_wsgi("/api/schema/", get_wsgi_application())


@schema.parametrize()
@settings(
    max_examples=4,
    deadline=timedelta(seconds=30),  # the time budget of one generated request (a hang fails)
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],  # no shrinking: bounded in time
    suppress_health_check=list(HealthCheck),
)
def test_no_answer_is_a_server_error_or_contradicts_the_schema(case, lab: Seeded) -> None:
    positive = case.meta is not None and case.meta.generation.mode == GenerationMode.POSITIVE
    if positive:
        for name, value in lab.ids.items():
            if name in (case.path_parameters or {}):
                case.path_parameters[name] = value
    headers = {"Authorization": f"Bearer {lab.token}"}
    if (case.method, case.path) != ("POST", "/api/v1/webhooks/"):
        case.call_and_validate(headers=headers)
        return
    # A webhook URL's host must be a real host name (RFC 1035: at most 253 characters, 63 a
    # label; Django's URLValidator) outside the network (webportal.notifications.outbound):
    # rules JSON
    # Schema's `format: uri` cannot state. Here, and only here, a schema-valid request may
    # be refused, and then only for its `url`; every other check still runs.
    response = case.call_and_validate(
        headers=headers, excluded_checks=[checks.positive_data_acceptance]
    )
    if positive and response.status_code == 400:
        assert set(response.json()["fields"]) == {"url"}, response.text
    elif positive:
        assert response.status_code == 201, response.text
