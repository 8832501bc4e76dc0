"""Account pages: the lab admin's (members and roles, the lab's model; thin, services do the
work) and the login lockout page."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from webportal.accounts import lockout, services
from webportal.accounts.models import Invitation, Lab, Membership
from webportal.cases import registry
from webportal.core.errors import ServiceError
from webportal.interfaces.accounts.forms import (
    ActiveModelForm,
    AddMemberForm,
    LabDetailsForm,
    PersonForm,
    ReferenceRangeForm,
    RoleForm,
)
from webportal.reports.differential import DEFAULT_ABSOLUTE_RANGES, DEFAULT_REFERENCE_RANGES
from webportal.reports.models import ReferenceRange
from webportal.reports.services import band_label, reference_intervals_for, set_reference_range


def admin_lab(request: HttpRequest, lab_id: int) -> Lab:
    """The lab if the user is its admin: another lab is 404, a non-admin member gets 403."""
    user = services.authenticated_user(request)
    lab = get_object_or_404(services.labs_of(user=user), pk=lab_id)
    services.require_role(user=user, lab=lab, allowed=services.LAB_ADMINS, action="do this")
    return lab


@require_GET
def lab_home(request: HttpRequest) -> HttpResponse:
    labs = services.labs_where(
        user=services.authenticated_user(request), allowed=services.LAB_ADMINS
    )
    if len(labs) == 1:
        return redirect("accounts:members", lab_id=labs[0].pk)
    return render(request, "accounts/lab_home.html", {"labs": labs})


@require_http_methods(["GET", "POST"])
def members(request: HttpRequest, lab_id: int) -> HttpResponse:
    lab = admin_lab(request, lab_id)
    form = AddMemberForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            membership = services.add_member_as_admin(
                admin=services.authenticated_user(request),
                lab=lab,
                username=form.cleaned_data["username"],
                role=form.cleaned_data["role"],
                password=form.cleaned_data["password"],
            )
        except services.AccountError as exc:
            form.add_error(None, str(exc))
        else:
            role = membership.get_role_display().lower()
            if isinstance(membership, Invitation):
                messages.success(
                    request, services.INVITED.format(username=membership.username, role=role)
                )
            else:
                messages.success(request, f"{membership.user} added as {role}.")
            return redirect("accounts:members", lab_id=lab.pk)
    return render(
        request,
        "accounts/members.html",
        {
            "lab": lab,
            "form": form,
            "memberships": services.members_of(lab=lab).select_related("user__profile"),
            "locked": services.locked_members(lab=lab),
            "role_form": RoleForm(),
        },
    )


def _membership(lab: Lab, membership_id: int) -> Membership:
    return get_object_or_404(
        Membership.objects.select_related("user", "lab"), pk=membership_id, lab=lab
    )


@require_POST
def member_role(request: HttpRequest, lab_id: int, membership_id: int) -> HttpResponse:
    lab = admin_lab(request, lab_id)
    membership = _membership(lab, membership_id)
    form = RoleForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose one of the roles.")
        return redirect("accounts:members", lab_id=lab.pk)
    try:
        membership = services.change_role(
            admin=services.authenticated_user(request),
            membership=membership,
            role=form.cleaned_data["role"],
        )
    except services.AccountError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(
            request, f"{membership.user} is now {membership.get_role_display().lower()}."
        )
    return redirect("accounts:members", lab_id=lab.pk)


@require_POST
def member_person(request: HttpRequest, lab_id: int, membership_id: int) -> HttpResponse:
    """A member's full name and title, as the reports they sign print them."""
    lab = admin_lab(request, lab_id)
    membership = _membership(lab, membership_id)
    form = PersonForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Names have at most 150 characters, a title 100.")
        return redirect("accounts:members", lab_id=lab.pk)
    try:
        services.update_person(
            admin=services.authenticated_user(request), membership=membership, **form.cleaned_data
        )
    except services.AccountError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Name and title of {membership.user} saved.")
    return redirect("accounts:members", lab_id=lab.pk)


@require_http_methods(["GET", "POST"])
def lab_details(request: HttpRequest, lab_id: int) -> HttpResponse:
    """What the lab's reports say of it: address, accreditation number, director."""
    lab = admin_lab(request, lab_id)
    form = LabDetailsForm(
        request.POST or None, initial={name: getattr(lab, name) for name in services.LAB_DETAILS}
    )
    if request.method == "POST" and form.is_valid():
        try:
            services.update_lab_details(
                admin=services.authenticated_user(request), lab=lab, **form.cleaned_data
            )
        except services.AccountError as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, "The lab's details are saved; new reports print them.")
            return redirect("accounts:lab_details", lab_id=lab.pk)
    return render(request, "accounts/lab_details.html", {"lab": lab, "form": form})


@require_POST
def member_remove(request: HttpRequest, lab_id: int, membership_id: int) -> HttpResponse:
    lab = admin_lab(request, lab_id)
    membership = _membership(lab, membership_id)
    try:
        services.remove_member(admin=services.authenticated_user(request), membership=membership)
    except services.AccountError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"{membership.user} no longer belongs to {lab}.")
    return redirect("accounts:members", lab_id=lab.pk)


@require_POST
def member_unlock(request: HttpRequest, lab_id: int, membership_id: int) -> HttpResponse:
    lab = admin_lab(request, lab_id)
    membership = _membership(lab, membership_id)
    services.unlock_member(admin=services.authenticated_user(request), membership=membership)
    messages.success(request, f"{membership.user} may log in again.")
    return redirect("accounts:members", lab_id=lab.pk)


@require_http_methods(["GET", "POST"])
def lab_model(request: HttpRequest, lab_id: int) -> HttpResponse:
    lab = admin_lab(request, lab_id)
    choices = registry.models_for(lab=lab)
    form = ActiveModelForm(
        request.POST or None, initial={"model_version": lab.active_model}, models=choices
    )
    if request.method == "POST" and form.is_valid():
        try:
            registry.activate_model(
                admin=services.authenticated_user(request),
                lab=lab,
                model_version=form.cleaned_data["model_version"],
                reason=form.cleaned_data["reason"],
            )
        except services.AccountError as exc:
            form.add_error("reason", str(exc))
        else:
            messages.success(request, "Model for new batches saved.")
            return redirect("accounts:lab_model", lab_id=lab.pk)
    return render(
        request,
        "accounts/lab_model.html",
        {
            "lab": lab,
            "form": form,
            "models": choices,
            "current": lab.active_model or registry.newest_shared_model(),
        },
    )


def locked_out(
    request: HttpRequest, original_response: HttpResponse | None, credentials: Any = None
) -> HttpResponse:
    """What django-axes answers to a login attempt on a locked username (AXES_LOCKOUT_CALLABLE).

    The login page is not re-rendered, so the user cannot mistake the lockout for a typo.
    """
    return render(
        request,
        "registration/locked_out.html",
        {
            "failure_limit": settings.LOGIN_FAILURE_LIMIT,
            "address_limit": settings.LOGIN_ADDRESS_FAILURE_LIMIT,
            "minutes": settings.LOGIN_LOCKOUT_MINUTES,
            "until": lockout.locked_until(
                username=(credentials or {}).get("username") or request.POST.get("username"),
                ip_address=getattr(request, "axes_ip_address", None),
            ),
            "login_url": request.path,
        },
        status=429,
    )


@require_http_methods(["GET", "POST"])
def reference_ranges(request: HttpRequest, lab_id: int) -> HttpResponse:
    """One row per class: the lab's own interval for any sex and age, or the adult default it
    replaces; below, the lab's ranges for one sex or an age band."""
    lab = admin_lab(request, lab_id)
    if request.method == "POST":
        form = ReferenceRangeForm(request.POST)
        if form.is_valid():
            data = form.cleaned_data
            try:
                set_reference_range(
                    actor=services.authenticated_user(request),
                    lab=lab,
                    label=data["label"],
                    low_percent=data["low_percent"],
                    high_percent=data["high_percent"],
                    low_absolute=data["low_absolute"],
                    high_absolute=data["high_absolute"],
                    sex=data["sex"] or "",
                    age_from_years=data["age_from_years"] or 0,
                    age_to_years=data["age_to_years"],
                )
            except ServiceError as exc:
                messages.error(request, str(exc))
            else:
                messages.success(request, f"Reference range of {data['label']} saved.")
        else:
            messages.error(
                request,
                "Give both % limits as numbers from 0 to 100; absolute limits and ages, when "
                "given, as numbers from 0.",
            )
        return redirect("accounts:reference_ranges", lab_id=lab.pk)
    intervals = reference_intervals_for(lab=lab)
    ranges = intervals.percent
    model = lab.active_model or registry.models_for(lab=lab).filter(lab=None).first()
    labels = list(dict.fromkeys([*(model.classes if model else []), *ranges]))
    rows = [
        {
            "label": label,
            "range": ranges.get(label),
            "absolute": intervals.absolute.get(label),
            "default": DEFAULT_REFERENCE_RANGES.get(label),
            "default_absolute": DEFAULT_ABSOLUTE_RANGES.get(label),
            "own": (label in ranges and ranges.get(label) != DEFAULT_REFERENCE_RANGES.get(label))
            or intervals.absolute.get(label) != DEFAULT_ABSOLUTE_RANGES.get(label),
        }
        for label in labels
    ]
    bands = [
        {
            "reference": reference,
            "age": band_label(reference.age_from_years, reference.age_to_years),
        }
        for reference in ReferenceRange.objects.filter(lab=lab).exclude(
            sex="", age_from_years=0, age_to_years=None
        )
    ]
    return render(
        request,
        "accounts/reference_ranges.html",
        {"lab": lab, "rows": rows, "bands": bands, "labels": labels},
    )


@require_GET
def invitations(request: HttpRequest) -> HttpResponse:
    """The invitations waiting for the logged-in account: accept or decline each."""
    user = services.authenticated_user(request)
    return render(
        request, "accounts/invitations.html", {"invitations": services.invitations_for(user=user)}
    )


@require_POST
def answer_invitation(request: HttpRequest, invitation_id: int) -> HttpResponse:
    user = services.authenticated_user(request)
    invitation = get_object_or_404(services.invitations_for(user=user), pk=invitation_id)
    accept = request.POST.get("answer") == "accept"
    try:
        services.answer_invitation(user=user, invitation=invitation, accept=accept)
    except services.AccountError as exc:
        messages.error(request, str(exc))
    else:
        verb = "joined" if accept else "declined the invitation to"
        messages.success(request, f"You {verb} {invitation.lab}.")
    return redirect("accounts:invitations")
