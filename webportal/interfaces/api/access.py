"""What an API caller may see: a token sees its own lab only; a portal session its labs.

Every API queryset starts here, so another lab's object is simply not found (404).
"""

from __future__ import annotations

from django.db.models import QuerySet
from rest_framework.request import Request

from webportal.accounts.models import Lab
from webportal.accounts.services import authenticated_user, labs_of
from webportal.api.models import ApiToken
from webportal.cases import selectors
from webportal.cases.models import Batch, Case, Patient


def labs(request: Request) -> QuerySet[Lab]:
    user_labs = labs_of(user=authenticated_user(request))
    if isinstance(request.auth, ApiToken):
        return user_labs.filter(pk=request.auth.lab_id)
    return user_labs


def cases(request: Request) -> QuerySet[Case]:
    return selectors.cases_visible_to(user=authenticated_user(request)).filter(
        lab__in=labs(request)
    )


def batches(request: Request) -> QuerySet[Batch]:
    return selectors.batches_visible_to(user=authenticated_user(request)).filter(
        case__lab__in=labs(request)
    )


def patients(request: Request) -> QuerySet[Patient]:
    return Patient.objects.filter(lab__in=labs(request)).select_related("lab")
