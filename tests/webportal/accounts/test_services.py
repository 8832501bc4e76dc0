from __future__ import annotations

import pytest

from tests.factories import LabFactory, MembershipFactory, UserFactory
from webportal.accounts import services
from webportal.accounts.models import Role

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
