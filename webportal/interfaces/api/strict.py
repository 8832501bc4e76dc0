"""Strict JSON input: a text field takes a JSON string, never a number or a boolean."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.http import QueryDict
from rest_framework import serializers

if TYPE_CHECKING:
    _Base = serializers.Serializer[Any]
else:
    _Base = object


class StrictStrings(_Base):
    """Mixin for input serializers: `"note": 0` is a 400, not the text "0".

    DRF's CharField turns numbers into text; the schema says string, so a JSON number there is
    invalid input. Forms (QueryDict) carry only text and pass as before; null keeps its rules
    (allow_null).
    """

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict) and not isinstance(data, QueryDict):
            wrong = {
                name: ["Not a valid string."]
                for name, field in self.fields.items()
                if isinstance(field, serializers.CharField)
                and not field.read_only
                and name in data
                and data[name] is not None
                and not isinstance(data[name], str)
            }
            if wrong:
                raise serializers.ValidationError(wrong)
        return super().to_internal_value(data)
