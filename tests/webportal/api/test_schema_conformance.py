"""Schemathesis against /api/schema/: generated requests to every operation, bounded.

No answer may be a 5xx, and none may contradict the schema (status code, content type,
headers, body). Requests go through the WSGI application in this process, so they see the
test's database (a token, a processed batch with a report) without a server.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
import schemathesis
from django.core.cache import cache
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from schemathesis import checks

from tests.conftest import noisy_jpeg_bytes
from webportal.api import tokens
from webportal.cases import processing, services
from webportal.cases.models import ModelVersion

pytestmark = pytest.mark.django_db

CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
]


@pytest.fixture(autouse=True)
def _keep_the_test_connection_open() -> Iterator[None]:
    # As Django's test client does: a request must not close the test's database connection.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.fixture
def token(member, tiny_model: ModelVersion) -> str:
    """A read-write token whose lab has a case, a processed batch and its report."""
    cache.clear()  # the throttle's counters
    case = services.create_case(
        lab=member.lab, created_by=None, accession_number="SCHEMA-1", patient_external_id="M-1"
    )
    batch = services.submit_batch(
        case=case, created_by=None, files=[("a.jpg", io.BytesIO(noisy_jpeg_bytes()))]
    )
    processing.process_batch(batch_id=batch.pk)
    return tokens.issue_token(lab=member.lab, username="schema-lis").plaintext


# Loaded once, when the tests are collected (the schema needs no database).
schema = schemathesis.openapi.from_wsgi("/api/schema/", get_wsgi_application())


@schema.parametrize()
@settings(
    max_examples=4,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_no_answer_is_a_server_error_or_contradicts_the_schema(case, token: str) -> None:
    case.call_and_validate(headers={"Authorization": f"Bearer {token}"}, checks=CHECKS)
