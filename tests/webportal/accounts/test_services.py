from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied

from tests.factories import LabFactory, MembershipFactory, ModelVersionFactory, UserFactory
from webportal.accounts import services
from webportal.accounts.models import Invitation, Membership, Role
from webportal.audit.models import Action, AuditEvent
from webportal.cases import registry

pytestmark = pytest.mark.django_db

ALL_ROLES = [Role.STAFF, Role.PATHOLOGIST, Role.ADMIN, Role.INTEGRATOR]
# What each role may do; every cell of this table is checked below.
EXPECTED = {
    Role.STAFF: {"write_cases": True, "review": True, "sign": False, "admin": False},
    Role.PATHOLOGIST: {"write_cases": True, "review": True, "sign": True, "admin": False},
    Role.ADMIN: {"write_cases": False, "review": False, "sign": False, "admin": True},
    Role.INTEGRATOR: {"write_cases": True, "review": False, "sign": False, "admin": False},
}


@pytest.mark.parametrize("role", ALL_ROLES)
def test_each_role_may_do_what_it_may_and_nothing_more(role: Role) -> None:
    membership = MembershipFactory.create(role=role)
    user, lab = membership.user, membership.lab
    got = {
        "write_cases": services.can_write_cases(user=user, lab=lab),
        "review": services.can_review(user=user, lab=lab),
        "sign": services.can_sign(user=user, lab=lab),
        "admin": services.can_admin_lab(user=user, lab=lab),
    }
    assert got == EXPECTED[role]


@pytest.mark.parametrize("role", ALL_ROLES)
def test_a_role_in_one_lab_gives_nothing_in_another(role: Role) -> None:
    membership = MembershipFactory.create(role=role)
    other = LabFactory.create()
    assert services.role_in(user=membership.user, lab=other) is None
    assert not services.can_write_cases(user=membership.user, lab=other)
    assert not services.can_admin_lab(user=membership.user, lab=other)
    with pytest.raises(services.RoleRequired):
        services.require_role(user=membership.user, lab=other, allowed=ALL_ROLES)


def test_require_role_returns_the_role_or_says_which_role_is_needed() -> None:
    membership = MembershipFactory.create(role=Role.STAFF)
    assert (
        services.require_role(user=membership.user, lab=membership.lab, allowed=services.REVIEWERS)
        == Role.STAFF
    )
    with pytest.raises(services.RoleRequired, match=r"Only a pathologist of .* may sign"):
        services.require_role(
            user=membership.user, lab=membership.lab, allowed=services.SIGNERS, action="sign"
        )


def test_a_user_with_only_integrator_roles_does_not_use_the_portal() -> None:
    integrator = MembershipFactory.create(role=Role.INTEGRATOR).user
    both = MembershipFactory.create(role=Role.INTEGRATOR).user
    MembershipFactory.create(user=both, role=Role.STAFF)
    assert not services.uses_portal(user=integrator)
    assert services.uses_portal(user=both)
    assert services.uses_portal(user=UserFactory.create())


def test_labs_where_lists_only_the_labs_with_an_allowed_role() -> None:
    user = UserFactory.create()
    signing = MembershipFactory.create(user=user, role=Role.PATHOLOGIST).lab
    MembershipFactory.create(user=user, role=Role.STAFF)
    assert list(services.labs_where(user=user, allowed=services.SIGNERS)) == [signing]


# --- lab administration ---------------------------------------------------------------------


def _admin_of_new_lab():
    return MembershipFactory.create(role=Role.ADMIN)


def test_a_lab_admin_only_invites_an_existing_user_who_joins_when_they_accept() -> None:
    admin = _admin_of_new_lab()
    elsewhere = MembershipFactory.create(role=Role.PATHOLOGIST)  # another lab's pathologist
    invitation = services.add_member_as_admin(
        admin=admin.user, lab=admin.lab, username=elsewhere.user.username, role=Role.PATHOLOGIST
    )
    assert isinstance(invitation, Invitation)
    assert not Membership.objects.filter(user=elsewhere.user, lab=admin.lab).exists()
    assert services.role_in(user=elsewhere.user, lab=admin.lab) is None
    invited = AuditEvent.objects.get(action=Action.MEMBER_INVITED)
    assert invited.actor == admin.user
    assert invited.after == {"username": elsewhere.user.username, "role": "pathologist"}
    with pytest.raises(PermissionDenied):
        services.answer_invitation(user=admin.user, invitation=invitation, accept=True)
    membership = services.answer_invitation(user=elsewhere.user, invitation=invitation, accept=True)
    assert membership is not None
    assert (membership.lab, membership.role) == (admin.lab, Role.PATHOLOGIST)
    joined = AuditEvent.objects.get(action=Action.MEMBER_ADDED)
    assert (joined.actor, joined.lab) == (elsewhere.user, admin.lab)
    assert joined.after == {
        "username": elsewhere.user.username,
        "role": "pathologist",
        "new_user": False,
        "invited_by": admin.user.username,
    }
    with pytest.raises(services.AccountError, match="answered already"):
        services.answer_invitation(user=elsewhere.user, invitation=invitation, accept=False)


def test_a_declined_invitation_makes_no_membership_and_is_recorded() -> None:
    admin = _admin_of_new_lab()
    person = UserFactory.create()
    invitation = services.add_member_as_admin(
        admin=admin.user, lab=admin.lab, username=person.username, role=Role.STAFF
    )
    assert isinstance(invitation, Invitation)
    assert services.answer_invitation(user=person, invitation=invitation, accept=False) is None
    assert not Membership.objects.filter(user=person, lab=admin.lab).exists()
    assert AuditEvent.objects.filter(action=Action.INVITATION_DECLINED, actor=person).exists()


def test_a_new_username_needs_a_strong_password_and_then_creates_the_user() -> None:
    admin = _admin_of_new_lab()
    with pytest.raises(services.AccountError, match=r"too short|too common"):
        services.add_member_as_admin(
            admin=admin.user, lab=admin.lab, username="tech1", role=Role.STAFF, password="abc"
        )
    assert not User.objects.filter(username="tech1").exists()
    services.add_member_as_admin(
        admin=admin.user,
        lab=admin.lab,
        username="tech1",
        role=Role.STAFF,
        password="slide-stain-microscope-41",
    )
    assert User.objects.get(username="tech1").check_password("slide-stain-microscope-41")
    assert AuditEvent.objects.get(action=Action.MEMBER_ADDED).after == {
        "username": "tech1",
        "role": "staff",
        "new_user": True,
    }


def test_adding_someone_twice_says_they_are_already_a_member() -> None:
    admin = _admin_of_new_lab()
    member = MembershipFactory.create(lab=admin.lab)
    with pytest.raises(services.AccountError, match="already a member"):
        services.add_member_as_admin(
            admin=admin.user, lab=admin.lab, username=member.user.username, role=Role.STAFF
        )


@pytest.mark.parametrize("role", [Role.STAFF, Role.PATHOLOGIST, Role.INTEGRATOR])
def test_only_a_lab_admin_manages_members(role: Role) -> None:
    member = MembershipFactory.create(role=role)
    other = MembershipFactory.create(lab=member.lab)
    with pytest.raises(services.RoleRequired):
        services.add_member_as_admin(
            admin=member.user, lab=member.lab, username="x", role=Role.STAFF, password="p"
        )
    with pytest.raises(services.RoleRequired):
        services.change_role(admin=member.user, membership=other, role=Role.ADMIN)
    with pytest.raises(services.RoleRequired):
        services.remove_member(admin=member.user, membership=other)
    assert not AuditEvent.objects.exists()


def test_the_admin_of_one_lab_cannot_manage_another_lab() -> None:
    admin = _admin_of_new_lab()
    elsewhere = MembershipFactory.create()
    with pytest.raises(services.RoleRequired):
        services.change_role(admin=admin.user, membership=elsewhere, role=Role.ADMIN)


def test_changing_a_role_records_it_before_and_after() -> None:
    admin = _admin_of_new_lab()
    member = MembershipFactory.create(lab=admin.lab, role=Role.STAFF)
    services.change_role(admin=admin.user, membership=member, role=Role.PATHOLOGIST)
    member.refresh_from_db()
    assert member.role == Role.PATHOLOGIST
    event = AuditEvent.objects.get(action=Action.MEMBER_ROLE_CHANGED)
    assert event.before == {"username": member.user.username, "role": "staff"}
    assert event.after == {"username": member.user.username, "role": "pathologist"}
    # Setting the same role again changes nothing and records nothing.
    services.change_role(admin=admin.user, membership=member, role=Role.PATHOLOGIST)
    assert AuditEvent.objects.filter(action=Action.MEMBER_ROLE_CHANGED).count() == 1


def test_the_last_admin_can_be_neither_demoted_nor_removed() -> None:
    admin = _admin_of_new_lab()
    with pytest.raises(services.AccountError, match="last admin"):
        services.change_role(admin=admin.user, membership=admin, role=Role.STAFF)
    with pytest.raises(services.AccountError, match="last admin"):
        services.remove_member(admin=admin.user, membership=admin)
    second = MembershipFactory.create(lab=admin.lab, role=Role.ADMIN)
    services.remove_member(admin=second.user, membership=admin)
    assert not Membership.objects.filter(pk=admin.pk).exists()


def test_removing_a_member_keeps_the_user_and_records_who_it_was() -> None:
    admin = _admin_of_new_lab()
    member = MembershipFactory.create(lab=admin.lab, role=Role.PATHOLOGIST)
    services.remove_member(admin=admin.user, membership=member)
    assert User.objects.filter(pk=member.user.pk).exists()
    assert services.role_in(user=member.user, lab=admin.lab) is None
    event = AuditEvent.objects.get(action=Action.MEMBER_REMOVED)
    assert event.before == {"username": member.user.username, "role": "pathologist"}
    assert event.after is None


def test_activating_a_model_is_the_admins_and_is_recorded() -> None:
    admin = _admin_of_new_lab()
    staff = MembershipFactory.create(lab=admin.lab, role=Role.PATHOLOGIST)
    model = ModelVersionFactory.create(name="pbc8")
    with pytest.raises(services.RoleRequired):
        registry.activate_model(admin=staff.user, lab=admin.lab, model_version=model)
    lab = registry.activate_model(admin=admin.user, lab=admin.lab, model_version=model)
    assert lab.active_model == model
    event = AuditEvent.objects.get(action=Action.MODEL_ACTIVATED)
    assert event.before == {"model": "newest shared"}
    assert event.after == {"model": str(model), "guard": "yes"}
    registry.activate_model(admin=admin.user, lab=admin.lab, model_version=None)
    lab.refresh_from_db()
    assert lab.active_model is None
    assert AuditEvent.objects.filter(action=Action.MODEL_ACTIVATED).count() == 2


def test_a_model_without_a_batch_guard_is_refused_unless_the_admin_states_why() -> None:
    admin = _admin_of_new_lab()
    unguarded = ModelVersionFactory.create(name="pbc8-old", guard={})
    with pytest.raises(services.AccountError, match="no batch guard"):
        registry.activate_model(admin=admin.user, lab=admin.lab, model_version=unguarded)
    with pytest.raises(services.AccountError, match="no batch guard"):
        registry.activate_model(
            admin=admin.user, lab=admin.lab, model_version=unguarded, reason="   "
        )
    admin.lab.refresh_from_db()
    assert admin.lab.active_model is None
    assert not AuditEvent.objects.filter(action=Action.MODEL_ACTIVATED).exists()

    why = "validation study of the old model, every batch reviewed by hand"
    lab = registry.activate_model(
        admin=admin.user, lab=admin.lab, model_version=unguarded, reason=why
    )
    assert lab.active_model == unguarded
    event = AuditEvent.objects.get(action=Action.MODEL_ACTIVATED)
    assert event.after == {"model": str(unguarded), "guard": "none", "reason": why}


def test_the_newest_shared_model_without_a_guard_needs_a_reason_too() -> None:
    admin = _admin_of_new_lab()
    guarded = ModelVersionFactory.create(name="guarded")
    registry.activate_model(admin=admin.user, lab=admin.lab, model_version=guarded)
    ModelVersionFactory.create(name="newest-unguarded", guard={})
    with pytest.raises(services.AccountError, match=r"newest-unguarded.*no batch guard"):
        registry.activate_model(admin=admin.user, lab=admin.lab, model_version=None)
    admin.lab.refresh_from_db()
    assert admin.lab.active_model == guarded


def test_labs_where_asks_the_users_own_role_not_another_members() -> None:
    staff = MembershipFactory.create(role=Role.STAFF)
    MembershipFactory.create(lab=staff.lab, role=Role.ADMIN)
    MembershipFactory.create(lab=staff.lab, role=Role.PATHOLOGIST)
    assert not services.labs_where(user=staff.user, allowed=services.LAB_ADMINS).exists()
    both = services.labs_where(user=staff.user, allowed=[Role.STAFF, Role.ADMIN])
    assert list(both) == [staff.lab]
