"""factory_boy factories for the portal's models."""

from __future__ import annotations

import factory
from django.contrib.auth import get_user_model

from webportal.accounts.models import Lab, Membership, Role
from webportal.cases.models import Case


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"user{n}")
    password = factory.django.Password("a-long-test-password-42")


class LabFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Lab

    name = factory.Sequence(lambda n: f"Lab {n}")


class MembershipFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Membership

    user = factory.SubFactory(UserFactory)
    lab = factory.SubFactory(LabFactory)
    role = Role.STAFF


class CaseFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Case

    lab = factory.SubFactory(LabFactory)
    accession_number = factory.Sequence(lambda n: f"ACC-{n:05d}")
