"""The one lab-isolation rule: a user sees the rows of the labs they belong to, nothing else.

Every `*_visible_to(user)` selector (cases, batches, images, cells, patients, reports, the
worklist) filters with `visible_to`; views, API views and services start from those."""

from __future__ import annotations

from typing import TypeVar

from django.contrib.auth.models import User
from django.db.models import Model, Q, QuerySet

ModelT = TypeVar("ModelT", bound=Model)


def visible_to(rows: QuerySet[ModelT], *, user: User, lab_path: str = "lab") -> QuerySet[ModelT]:
    """`rows` limited to the labs `user` is a member of; `lab_path` leads from a row to its lab
    (e.g. "image__batch__case__lab")."""
    return rows.filter(Q(**{f"{lab_path}__memberships__user": user}))
