"""Checks registered resource inputs against the providers' published schemas (unknown property, wrong type).

Mocks accept anything, so without this a misspelt property or a string where the provider wants an integer
would pass every mock test and fail only at `pulumi up`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.infra.harness import Registration

SCHEMA_FILES = ("docker.schema.json", "aiven.schema.json")
# Inputs the SDK adds to every provider resource; they belong to the engine, not to the provider's schema.
PROVIDER_ENGINE_INPUTS = {"version", "pluginDownloadURL"}
_JSON_TYPES: dict[str, tuple[type[Any], ...]] = {
    "string": (str,),
    "boolean": (bool,),
    "integer": (int,),
    "number": (int, float),
    "array": (list,),
    "object": (dict,),
}


class ProviderSchemas:
    """The resource, provider and type definitions of the schema files in one directory."""

    def __init__(self, directory: Path) -> None:
        self.resources: dict[str, dict] = {}
        self.types: dict[str, dict] = {}
        for filename in SCHEMA_FILES:
            schema = json.loads((directory / filename).read_text())
            self.resources.update(schema["resources"])
            self.resources[f"pulumi:providers:{schema['name']}"] = schema["provider"]
            self.types.update(schema.get("types", {}))

    def problems(self, registration: Registration) -> list[str]:
        """Everything wrong with one registration's inputs; empty when it matches its schema."""
        if not registration.custom:
            return []  # a component: no provider schema
        spec = self.resources.get(registration.type)
        where = f"{registration.type} {registration.name}"
        if spec is None:
            return [f"{where}: no schema for this resource type"]
        inputs = dict(registration.inputs)
        if registration.type.startswith("pulumi:providers:"):
            for key in PROVIDER_ENGINE_INPUTS:
                inputs.pop(key, None)
        found = self._object(inputs, spec.get("inputProperties", {}), spec.get("requiredInputs", []), where)
        return found

    def _object(self, value: dict, properties: dict, required: list[str], path: str) -> list[str]:
        found = [f"{path}.{key}: required input missing" for key in required if key not in value]
        for key, item in value.items():
            if key not in properties:
                found.append(f"{path}.{key}: unknown property")
            else:
                found.extend(self._value(item, properties[key], f"{path}.{key}"))
        return found

    def _value(self, value: Any, spec: dict, path: str) -> list[str]:
        if value is None:
            return []
        if "$ref" in spec:
            return self._value(value, self.types[spec["$ref"].removeprefix("#/types/")], path)
        expected = spec.get("type")
        if expected is None:
            return []  # "any"
        if not isinstance(value, _JSON_TYPES[expected]) or (
            expected in ("integer", "number") and isinstance(value, bool)
        ):
            return [f"{path}: expected {expected}, got {type(value).__name__} {value!r}"]
        if "enum" in spec and value not in [choice["value"] for choice in spec["enum"]]:
            return [f"{path}: {value!r} is not one of the schema's enum values"]
        if expected == "array":
            return [
                p
                for index, item in enumerate(value)
                for p in self._value(item, spec.get("items", {}), f"{path}[{index}]")
            ]
        if expected == "object" and "properties" in spec:
            return self._object(value, spec["properties"], spec.get("required", []), path)
        if expected == "object" and "additionalProperties" in spec:
            return [
                p
                for key, item in value.items()
                for p in self._value(item, spec["additionalProperties"], f"{path}.{key}")
            ]
        return []
