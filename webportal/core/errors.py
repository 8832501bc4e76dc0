"""One error base for the whole portal, mapped to HTTP in one place per interface: the API's
exception handler (webportal.interfaces.api.errors.exception_handler); a page shows the
message where it catches it.

A service raises an ApplicationError (or a subclass) with a sentence fit to show the person
who asked; a page shows that sentence, the API answers it in its error shape.
"""

from __future__ import annotations


class ApplicationError(Exception):
    """A request that cannot be carried out, with a message fit to show the user.

    `http_status` and `code` are what the API answers when nothing more precise is said (a view
    may answer 409 for a conflict with the state of a resource)."""

    http_status = 400
    code = "invalid"


class ServiceError(ApplicationError):
    """A service refused: the input or the state of the records does not allow it."""
