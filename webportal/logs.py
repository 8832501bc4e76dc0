"""Structured logs: one JSON object a line (python-json-logger), with the context of the line.

Every line of the portal and the workers carries `time`, `level`, `logger`, `message` and
`request_id`, `batch_id`, `lab` (empty when unknown): context variables set by
`RequestIdMiddleware` for a request (the id comes from an `X-Request-ID` header a proxy sent,
or is made here, and is sent back in the response), and by the worker for a task
(workers.tasks: the request id travels from the upload into the task as a message header;
the batch and its lab from the batch the task works on).
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from django.http import HttpRequest, HttpResponse

request_id: ContextVar[str] = ContextVar("request_id", default="")
batch_id: ContextVar[str] = ContextVar("batch_id", default="")
lab: ContextVar[str] = ContextVar("lab", default="")

REQUEST_ID_HEADER = "X-Request-ID"
# The name of the message header that carries the request id into a task.
TASK_HEADER = "hv_request_id"
_ACCEPTED_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


class ContextFilter(logging.Filter):
    """Puts the request id, batch id and lab of the current context on every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        record.batch_id = batch_id.get()
        record.lab = lab.get()
        return True


@contextmanager
def bound(
    *, request: str | None = None, batch: int | str | None = None, lab_slug: str | None = None
) -> Iterator[None]:
    """Set some of the context for the block (what is not given stays as it was)."""
    tokens = []
    if request is not None:
        tokens.append((request_id, request_id.set(request)))
    if batch is not None:
        tokens.append((batch_id, batch_id.set(str(batch))))
    if lab_slug is not None:
        tokens.append((lab, lab.set(lab_slug)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def new_request_id(supplied: str = "") -> str:
    """The caller's id when it is a plain token of at most 64 characters, else a new one."""
    return supplied if _ACCEPTED_ID.fullmatch(supplied) else uuid.uuid4().hex


class RequestIdMiddleware:
    """A request id for every request, on each of its log lines and in its response."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        rid = new_request_id(request.headers.get(REQUEST_ID_HEADER, ""))
        with bound(request=rid, batch="", lab_slug=""):
            response = self.get_response(request)
        response[REQUEST_ID_HEADER] = rid
        return response
