"""The audit trail browser: a lab admin filters the lab's events."""

from __future__ import annotations

from django.contrib.auth.models import User
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from webportal.audit import selectors
from webportal.audit.words import in_words
from webportal.interfaces.accounts.views import admin_lab
from webportal.interfaces.audit.forms import AuditFilterForm

PAGE_SIZE = 50


@require_GET
def audit_trail(request: HttpRequest, lab_id: int) -> HttpResponse:
    lab = admin_lab(request, lab_id)
    # Anyone who ever acted in the lab, members past and present.
    actors = User.objects.filter(pk__in=selectors.events_of(lab=lab).values("actor_id")).order_by(
        "username"
    )
    form = AuditFilterForm(
        request.GET or None, actors=actors, object_types=selectors.object_types_of(lab=lab)
    )
    filters = form.cleaned_data if form.is_valid() else {}
    actor = filters.get("actor")
    events = selectors.events_of(
        lab=lab,
        action=filters.get("action", ""),
        actor_id=actor.pk if actor is not None else None,
        date_from=filters.get("date_from"),
        date_to=filters.get("date_to"),
        object_type=filters.get("object_type", ""),
        object_id=filters.get("object_id", ""),
    )
    page = Paginator(events, PAGE_SIZE).get_page(request.GET.get("page"))
    rows = [in_words(event) for event in page]
    query = request.GET.copy()
    query.pop("page", None)
    return render(
        request,
        "audit/audit_trail.html",
        {"lab": lab, "form": form, "page": page, "rows": rows, "query": query.urlencode()},
    )
