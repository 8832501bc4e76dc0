"""Lab isolation, generated from the URL configuration.

Every URL the project serves is found by walking the resolver, so a URL added later is covered
without anyone writing a test for it:

* a URL with an object id answers a member of another lab, in every role, for GET and POST
  alike, exactly as it answers for an id that does not exist: 404 (405 for a method it does not
  take; 403 only where a role may not use the page at all), and changes nothing;
* a URL without one refuses an anonymous visitor (login redirect, 401, 403 or 404), unless it is
  on the short public list below.

A new kind of URL parameter fails until `_value_for` knows how to make another lab's object for
it: add the object to `foreign_world` (or an alias) rather than an exception.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from django.apps import apps
from django.db import models
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver

from tests.conftest import noisy_jpeg_bytes
from tests.factories import MembershipFactory
from webportal.accounts.models import Invitation, Membership, Role
from webportal.adaptation.models import AdaptationJob
from webportal.api.models import (
    ApiToken,
    LisDelivery,
    LisEndpoint,
    WebhookDelivery,
    WebhookEndpoint,
)
from webportal.api.tokens import issue_token
from webportal.cases import services
from webportal.cases.models import Batch, ModelVersion
from webportal.notifications.webhooks import emit, register_endpoint
from webportal.pipeline import batch_job
from webportal.reports.models import Report

pytestmark = pytest.mark.django_db

# Open to anyone, by design. Keep this list short; everything else needs a login.
PUBLIC = frozenset(
    {"login/", "logout/", "favicon.ico", "healthz", "readyz", "api/schema/", "api/docs/"}
)
# Django's admin: staff accounts only, with its own login; not a lab user's view.
OWN_ACCESS_CONTROL = ("admin/",)
# URL parameters that are not named <model>_id.
ALIASES: dict[str, type[models.Model]] = {
    "token_id": ApiToken,
    "webhook_id": WebhookEndpoint,
    "delivery_id": WebhookDelivery,
}

MISSING_ID = 987654321
_PARAMETER = re.compile(r"<(?:\w+:)?(\w+)>|\(\?P<(\w+)>[^)]*\)")


@dataclass(frozen=True)
class Route:
    template: str  # "batches/<int:batch_id>/cancel/"
    name: str  # "cases:batch_cancel", or the template when unnamed

    @property
    def parameters(self) -> list[str]:
        return [a or b for a, b in _PARAMETER.findall(self.template)]

    def url(self, values: dict[str, Any]) -> str:
        path = _PARAMETER.sub(lambda m: str(values[m.group(1) or m.group(2)]), self.template)
        return "/" + path.lstrip("^").rstrip("$").replace("\\", "")


def _walk(patterns: list[Any], prefix: str = "", namespace: str = "") -> Iterator[Route]:
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            inner = f"{namespace}{pattern.namespace}:" if pattern.namespace else namespace
            yield from _walk(pattern.url_patterns, prefix + str(pattern.pattern), inner)
        elif isinstance(pattern, URLPattern):
            template = prefix + str(pattern.pattern)
            yield Route(template, f"{namespace}{pattern.name}" if pattern.name else template)


def all_routes() -> list[Route]:
    routes = list(_walk(get_resolver().url_patterns))
    return [r for r in routes if not r.template.lstrip("^").startswith(OWN_ACCESS_CONTROL)]


ROUTES = all_routes()
WITH_IDS = [route for route in ROUTES if route.parameters]
WITHOUT_IDS = [route for route in ROUTES if not route.parameters]


# --- the other lab --------------------------------------------------------------------------


@dataclass
class World:
    visitors: list[Membership]  # one per role, each in a lab that owns nothing else
    batch: Batch
    token: ApiToken

    @property
    def own(self) -> set[tuple[type[models.Model], Any]]:
        """The visitors' own rows, never used as another lab's object."""
        return {(type(o), o.pk) for v in self.visitors for o in (v, v.user, v.lab)}


@pytest.fixture
def foreign_world(tiny_model: ModelVersion) -> World:
    visitors = [MembershipFactory.create(role=role) for role in Role]
    other = MembershipFactory.create(role=Role.STAFF)
    case = services.create_case(
        lab=other.lab,
        created_by=other.user,
        accession_number="OTHER-1",
        patient_external_id="MRN-OTHER",
    )
    files = [("cell.jpg", _file(noisy_jpeg_bytes())), ("notes.jpg", _file(b"plain text"))]
    webhook = register_endpoint(lab=other.lab, url="https://lis.example.org/hook")
    batch = services.submit_batch(case=case, created_by=other.user, files=files)
    batch_job.process_batch(batch_id=batch.pk)  # cells, predictions and a report
    if not WebhookDelivery.objects.filter(endpoint=webhook).exists():
        emit(lab=other.lab, event="batch.done", data={"batch": batch.pk})
    token = issue_token(lab=other.lab, username="other-lis").token
    AdaptationJob.objects.create(lab=other.lab, base_model=tiny_model)
    Invitation.objects.create(lab=other.lab, username="someone-else", role=Role.PATHOLOGIST)
    lis_endpoint = LisEndpoint.objects.create(lab=other.lab, host="lis.example.org", port=2575)
    LisDelivery.objects.create(
        endpoint=lis_endpoint, report=Report.objects.filter(batch=batch).get(), control_id="x-1"
    )
    batch.refresh_from_db()
    return World(visitors=visitors, batch=batch, token=token)


def _file(content: bytes) -> io.BytesIO:
    return io.BytesIO(content)


def _model_named(parameter: str) -> type[models.Model] | None:
    if parameter in ALIASES:
        return ALIASES[parameter]
    wanted = parameter.removesuffix("_id").replace("_", "")
    matches = [m for m in apps.get_models() if m.__name__.lower() == wanted]
    return matches[0] if len(matches) == 1 else None


def _value_for(parameter: str, world: World) -> Any:
    if parameter == "version":  # a report's version number, with its batch_id
        return Report.objects.filter(batch=world.batch).values_list("version", flat=True)[0]
    model = _model_named(parameter)
    if model is None:
        pytest.fail(
            f"URL parameter {parameter!r}: no model of that name; teach test_lab_isolation "
            "(ALIASES or _value_for) how to make another lab's object for it"
        )
    own = [pk for kind, pk in world.own if kind is model]
    target = model._default_manager.exclude(pk__in=own).order_by("pk").first()
    if target is None:
        pytest.fail(
            f"URL parameter {parameter!r}: foreign_world makes no {model.__name__}; add one"
        )
    return target.pk


# --- the tests ------------------------------------------------------------------------------


def test_the_walk_finds_every_object_url_including_both_cancel_endpoints() -> None:
    names = {route.name for route in WITH_IDS}
    assert {"cases:batch_cancel", "api:batch_cancel", "api_batch_cancel"} <= names
    assert {"cases:image_file", "cases:case_detail", "api:batch_report_version_fhir"} <= names
    assert "login" in {route.name for route in WITHOUT_IDS}


def test_another_labs_object_is_not_found_at_every_url_with_an_id_in_every_role(
    foreign_world: World,
) -> None:
    """One world for all URLs and roles (building it is the slow part); every fault listed."""
    urls = [
        (
            route.url({p: _value_for(p, foreign_world) for p in route.parameters}),
            route.url(dict.fromkeys(route.parameters, MISSING_ID)),
        )
        for route in WITH_IDS
    ]
    faults = []
    for visitor in foreign_world.visitors:
        client = Client()
        client.force_login(visitor.user)
        for url, missing_url in urls:
            answers = {m: getattr(client, m)(url).status_code for m in ("get", "post")}
            missing = {m: getattr(client, m)(missing_url).status_code for m in ("get", "post")}
            # 404 (405 for a method the URL does not take), or a refusal that does not depend
            # on the object at all (integrators get 403 on every portal page).
            if not set(answers.values()) <= {403, 404, 405} or answers != missing:
                faults.append(f"{visitor.role} {url}: {answers}, a missing id: {missing}")

    assert not faults, "another lab's object must look missing:\n" + "\n".join(faults)
    assert len(urls) == len(WITH_IDS) >= 19
    batch, token = foreign_world.batch, foreign_world.token
    assert Batch.objects.get(pk=batch.pk).status == batch.status == Batch.Status.DONE
    assert ApiToken.objects.get(pk=token.pk).revoked_at is None
    assert not Invitation.objects.filter(answered_at__isnull=False).exists()


@pytest.mark.parametrize("route", WITHOUT_IDS, ids=[route.name for route in WITHOUT_IDS])
def test_every_url_without_an_id_needs_a_login_unless_it_is_public(route: Route) -> None:
    if route.template.lstrip("^") in PUBLIC:
        pytest.skip("public by design")
    response = Client().get(route.url({}))

    if response.status_code == 302:
        assert response["Location"].startswith("/login/"), response["Location"]
    else:
        assert response.status_code in {401, 403, 404}, (route.template, response.status_code)


def test_the_public_list_names_only_urls_that_exist() -> None:
    assert {route.template.lstrip("^") for route in WITHOUT_IDS} >= PUBLIC
