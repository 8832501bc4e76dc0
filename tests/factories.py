"""factory_boy factories for the portal's models."""

from __future__ import annotations

import factory.django
from django.contrib.auth.models import User
from factory.declarations import Sequence, SubFactory

from webportal.accounts.models import Lab, Membership, Role
from webportal.cases.models import Case


class UserFactory(factory.django.DjangoModelFactory[User]):
    class Meta:
        model = User
        django_get_or_create = ("username",)

    username = Sequence(lambda n: f"user{n}")
    password = factory.django.Password("a-long-test-password-42")


class LabFactory(factory.django.DjangoModelFactory[Lab]):
    class Meta:
        model = Lab

    name = Sequence(lambda n: f"Lab {n}")
    slug = Sequence(lambda n: f"lab-{n}")


class MembershipFactory(factory.django.DjangoModelFactory[Membership]):
    class Meta:
        model = Membership

    user = SubFactory(UserFactory)
    lab = SubFactory(LabFactory)
    role = Role.STAFF


class CaseFactory(factory.django.DjangoModelFactory[Case]):
    class Meta:
        model = Case

    lab = SubFactory(LabFactory)
    accession_number = Sequence(lambda n: f"ACC-{n:05d}")
