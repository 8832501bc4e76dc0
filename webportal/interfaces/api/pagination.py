from __future__ import annotations

from typing import Any

from rest_framework.exceptions import ValidationError
from rest_framework.pagination import PageNumberPagination
from rest_framework.request import Request

# Page numbers beyond this are a bad request (400), never an overflow.
MAX_PAGE = 2**31 - 1


def _whole_number(request: Request, name: str, *, maximum: int) -> int | None:
    """The query parameter as a whole number from 1 to maximum; absent: None; otherwise 400."""
    if name not in request.query_params:
        return None
    raw = request.query_params[name]
    if not raw.isascii() or not raw.isdigit() or len(raw) > 10 or not 1 <= int(raw) <= maximum:
        raise ValidationError({name: [f"A whole number from 1 to {maximum}."]})
    return int(raw)


class Pagination(PageNumberPagination):
    """`?page=N&page_size=M`; every page carries absolute `next` and `previous` links.

    Both are whole numbers from 1 (page_size at most 500): anything else is a 400 with the
    field named, not silently the default (DRF's own behaviour); a page past the end is a 404.
    """

    page_size_query_param = "page_size"
    max_page_size = 500

    def paginate_queryset(self, queryset: Any, request: Request, view: Any = None) -> Any:
        _whole_number(request, self.page_query_param, maximum=MAX_PAGE)
        return super().paginate_queryset(queryset, request, view)

    def get_page_size(self, request: Request) -> int | None:
        size = _whole_number(request, self.page_size_query_param, maximum=self.max_page_size)
        return size if size is not None else self.page_size

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.page_query_param:
                parameter["schema"].update(minimum=1, maximum=MAX_PAGE)
            elif parameter["name"] == self.page_size_query_param:
                parameter["schema"].update(minimum=1, maximum=self.max_page_size)
        return parameters
