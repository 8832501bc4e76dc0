"""Log lines are JSON objects carrying the request id, batch id and lab of their context."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from django.urls import reverse
from rest_framework.test import APIClient

from tests.conftest import noisy_jpeg_bytes
from webportal import logs
from webportal.api import tokens

pytestmark = pytest.mark.django_db


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """The root logger's lines as settings.LOGGING formats them, into a buffer."""
    from pythonjsonlogger.json import JsonFormatter

    logging_settings: dict[str, Any] = settings.LOGGING
    config: dict[str, Any] = logging_settings["formatters"]["json"]
    options = {k: v for k, v in config.items() if k != "()"}
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter(**options))
    handler.addFilter(logs.ContextFilter())
    root = logging.getLogger()
    root.addHandler(handler)
    previous = root.level
    root.setLevel(logging.INFO)
    yield stream
    root.removeHandler(handler)
    root.setLevel(previous)


def _lines(stream: io.StringIO) -> list[dict[str, str]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_every_line_has_time_level_logger_and_the_context_fields(json_lines) -> None:
    logging.getLogger("webportal.somewhere").warning("outside any request")
    with logs.bound(request="abc", batch=7, lab_slug="north"):
        logging.getLogger("webportal.somewhere").info("inside")
    outside, inside = _lines(json_lines)[-2:]
    assert {"time", "level", "logger", "message", "request_id", "batch_id", "lab"} <= set(outside)
    assert (outside["level"], outside["logger"], outside["request_id"]) == (
        "WARNING",
        "webportal.somewhere",
        "",
    )
    assert (inside["request_id"], inside["batch_id"], inside["lab"]) == ("abc", "7", "north")


def test_an_upload_logs_with_the_callers_request_id_its_batch_and_lab(
    member, case, tiny_model, json_lines
) -> None:
    issued = tokens.issue_token(lab=member.lab, username="lis", name="LIS")
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {issued.plaintext}")
    upload = io.BytesIO(noisy_jpeg_bytes())
    upload.name = "a.jpg"
    response = api.post(
        reverse("api:case_batches", args=[case.pk]),
        {"files": [upload]},
        format="multipart",
        HTTP_X_REQUEST_ID="lis-req-42",
    )
    assert response.status_code == 201
    assert response["X-Request-ID"] == "lis-req-42"
    uploaded = [line for line in _lines(json_lines) if line["message"].startswith("batch uploaded")]
    assert len(uploaded) == 1
    assert uploaded[0]["request_id"] == "lis-req-42"
    assert uploaded[0]["batch_id"] == str(response.json()["id"])
    assert uploaded[0]["lab"] == member.lab.slug
    assert logs.request_id.get() == ""  # nothing leaks past the request


def test_a_request_without_a_usable_id_gets_a_new_one() -> None:
    from django.test import Client

    response = Client().get(reverse("healthz"), HTTP_X_REQUEST_ID="bad id with spaces")
    assert response["X-Request-ID"] != "bad id with spaces"
    assert len(response["X-Request-ID"]) == 32
