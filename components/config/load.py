"""The one load path: stack config -> raw values (defaults from `KEYS`) -> `StackSettings`, or one StackConfigError.

Secrets are checked first: a secret key with a value stored in plain text is refused before anything else sees it.
Then every key's raw value is handed to the field that reads it (by its alias, the Pulumi key), nested the way the
models are, and pydantic validates the lot. The first problem becomes `StackConfigError(key, problem)`: the key from
the field's alias, or from the `RuleViolation` a cross-field rule raised. pydantic's own text, which can include the
input, is never shown.
"""

from __future__ import annotations

from typing import Any

import pulumi
from pulumi.runtime import get_config, get_config_secret_keys_env, is_config_secret
from pydantic import BaseModel, ValidationError

from components.config.keys import KEYS, StackConfigError
from components.config.models import Concern, RuleViolation, StackSettings


def load_settings(config: pulumi.Config | None = None) -> StackSettings:
    """Read and validate the current stack's config. Raises StackConfigError naming the first bad key."""
    config = config or pulumi.Config()
    raw = {key: _raw_value(config, key) for key in KEYS}
    try:
        return StackSettings.model_validate(nest(StackSettings, raw))
    except ValidationError as error:
        raise _first_problem(error) from None


def _raw_value(config: pulumi.Config, key: str) -> Any:
    """The stack's value of `key` as the CLI passes it (a string), or the default of `KEYS`."""
    full_key = config.full_key(key)
    value = get_config(full_key)  # not config.get: that warns about reading a secret in clear
    stored_secret = is_config_secret(full_key) or full_key in get_config_secret_keys_env()
    if KEYS[key].secret and value and not stored_secret:
        raise StackConfigError(key, f"is stored in plain text; set it with: pulumi config set --secret {key}")
    return KEYS[key].default if value is None else value


def nest(model: type[BaseModel], raw: dict[str, Any]) -> dict[str, Any]:
    """The input of `model`: each field by its alias (the Pulumi key), each concern field filled the same way."""
    data: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, Concern):
            data[name] = nest(field.annotation, raw)
        elif field.alias is not None:
            data[field.alias] = raw[field.alias]
    return data


def _first_problem(error: ValidationError) -> StackConfigError:
    detail = error.errors(include_input=False, include_url=False)[0]
    cause = (detail.get("ctx") or {}).get("error")
    if isinstance(cause, RuleViolation):
        return StackConfigError(cause.key, str(cause))
    key = next((str(part) for part in reversed(detail["loc"]) if str(part) in KEYS), ".".join(map(str, detail["loc"])))
    problem = str(cause) if isinstance(cause, ValueError) else detail["msg"]
    return StackConfigError(key, problem)
