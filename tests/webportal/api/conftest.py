from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from webportal.api import tokens
from webportal.api.models import ApiToken


def bearer(plaintext: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {plaintext}")
    return client


@pytest.fixture
def issued(member) -> tokens.IssuedToken:
    """A read-write token for an integrator account of the member's lab."""
    return tokens.issue_token(lab=member.lab, username="lis", name="LIS")


@pytest.fixture
def api(issued: tokens.IssuedToken) -> APIClient:
    return bearer(issued.plaintext)


@pytest.fixture
def read_only_api(member) -> APIClient:
    issued = tokens.issue_token(lab=member.lab, username="lis-reader", scope=ApiToken.Scope.READ)
    return bearer(issued.plaintext)
