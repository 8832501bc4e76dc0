"""Generated from the URL configuration: every API endpoint, every method.

Another lab's ids answer 404 (never 403, never the object); a revoked token answers 401.
"""

from __future__ import annotations

import io
import re

import pytest
from django.urls import URLPattern
from rest_framework.test import APIClient

from tests.conftest import noisy_jpeg_bytes
from tests.factories import MembershipFactory
from tests.webportal.conftest import bearer
from webportal.accounts.models import Role
from webportal.api import tokens
from webportal.cases import services
from webportal.cases.models import ModelVersion
from webportal.interfaces.api import urls as api_urls
from webportal.notifications import webhooks
from webportal.pipeline import batch_job

pytestmark = pytest.mark.django_db

METHODS = ["get", "post", "put", "patch", "delete"]


def _endpoints() -> list[tuple[str, str, list[str]]]:
    found = []
    for pattern in api_urls.urlpatterns:
        assert isinstance(pattern, URLPattern)
        view = pattern.callback
        cls = getattr(view, "view_class", None) or getattr(view, "cls", None)
        assert cls is not None, pattern
        methods = [m for m in METHODS if hasattr(cls, m)]
        route = str(pattern.pattern)
        found.append((route, str(pattern.name), methods))
    return found


ENDPOINTS = _endpoints()


@pytest.fixture
def foreign(tiny_model: ModelVersion, monkeypatch) -> dict[str, int]:
    """A processed batch with a report, a webhook and a delivery, all in another lab."""
    monkeypatch.setattr(webhooks, "_send", lambda delivery_id, countdown=0: None)
    lab = MembershipFactory.create(role=Role.ADMIN).lab
    case = services.create_case(
        lab=lab, created_by=None, accession_number="F-1", patient_external_id="F-MRN"
    )
    batch = services.submit_batch(
        case=case, created_by=None, files=[("a.jpg", io.BytesIO(noisy_jpeg_bytes()))]
    )
    batch_job.process_batch(batch_id=batch.pk)
    endpoint = webhooks.register_endpoint(lab=lab, url="https://other.example/hook")
    (delivery,) = webhooks.emit(lab=lab, event="batch.done", data={})
    return {
        "case_id": case.pk,
        "patient_id": case.patient_id or 0,
        "batch_id": batch.pk,
        "version": 1,
        "cell_id": batch.images.get().cells.get().pk,
        "webhook_id": endpoint.pk,
        "delivery_id": delivery.pk,
    }


def _path(route: str, ids: dict[str, int]) -> str:
    def fill(match: re.Match[str]) -> str:
        return str(ids[match.group(1)])

    return "/api/v1/" + re.sub(r"<int:(\w+)>", fill, route)


def test_every_endpoint_is_covered_by_these_tests() -> None:
    names = {name for _, name, _ in ENDPOINTS}
    assert {"batch_report", "batch_cells", "webhook_redeliver", "case_list"} <= names
    assert all(methods for _, _, methods in ENDPOINTS)


def test_another_labs_ids_are_not_found_by_any_method(
    api: APIClient, foreign: dict[str, int]
) -> None:
    checked = 0
    for route, _, methods in ENDPOINTS:
        if "<int:" not in route:
            continue
        path = _path(route, foreign)
        for method in methods:
            response = getattr(api, method)(path, {}, format="json")
            assert response.status_code == 404, (method, path, response.content[:300])
            assert response.json()["error"] == "not_found"
            checked += 1
    assert checked >= 20


def test_a_revoked_token_gets_401_everywhere(member, foreign: dict[str, int]) -> None:
    issued = tokens.issue_token(lab=member.lab, username="lis-revoked")
    tokens.revoke_token(token=issued.token)
    client = bearer(issued.plaintext)
    for route, _, methods in ENDPOINTS:
        path = _path(route, foreign)
        for method in methods:
            response = getattr(client, method)(path, {}, format="json")
            assert response.status_code == 401, (method, path)
            assert response.json()["error"] == "authentication_failed"
