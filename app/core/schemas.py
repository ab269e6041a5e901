"""The two base models every API schema derives from: how the API spells fields and how strictly it reads input."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class ApiModel(BaseModel):
    """A model the API shows: camelCase on the wire (like the rest of the API), snake_case in Python."""

    model_config = ConfigDict(alias_generator=to_camel, validate_by_name=True, serialize_by_alias=True)


class StrictRequestModel(BaseModel):
    """Strict request model: camelCase, no coercion ("2" is not 2), unknown fields are an error, not dropped."""

    model_config = ConfigDict(
        alias_generator=to_camel, validate_by_name=True, strict=True, extra="forbid", str_strip_whitespace=True
    )
