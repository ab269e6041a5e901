"""HTML forms of the dashboard: reading a urlencoded body, and turning the create form into the API's create request.

The create form is validated by the API's own `CreateInstanceRequest`, so a field gets exactly the message the API's
422 would name it with; only the form's text shapes (numbers, `8888/http` port lists, `KEY=value` lines) are read
here first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from fastapi import Request
from pydantic import ValidationError

from app.fleet.schemas import CreateInstanceRequest

MAX_FORM_FIELDS = 64
_PORT = re.compile(r"^(\d{1,5})(?:/(tcp|http))?$")
_NUMBER_FIELDS = ("gpuNum", "rootfsSize", "months")
_TEXT_FIELDS = ("name", "productId", "templateId", "imageUrl", "imageAuthId", "command", "billingMode")
GENERAL = "_form"  # where an error that names no field is shown


async def read_form(request: Request) -> dict[str, str]:
    """The urlencoded body as one value per field (the first one); the body size is capped by the app's middleware."""
    parsed = parse_qs(
        (await request.body()).decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS
    )
    return {name: values[0] for name, values in parsed.items()}


@dataclass
class CreateForm:
    """What the person typed (env values excepted: they are never shown back) and the errors by field."""

    values: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def add_error(self, name: str, message: str) -> None:
        """Keep the first error of a field."""
        self.errors.setdefault(name, message)


def parse_create_form(form: dict[str, str]) -> tuple[CreateInstanceRequest | None, CreateForm]:
    """The create request the form describes, or None with the errors beside each field."""
    shown = {name: form.get(name, "").strip() for name in (*_TEXT_FIELDS, *_NUMBER_FIELDS, "ports")}
    env_lines = form.get("envs", "")
    # Keys only: a value typed into the form is sent to the API and never rendered again.
    shown["envs"] = "\n".join(f"{line.partition('=')[0].strip()}=" for line in env_lines.splitlines() if line.strip())
    result = CreateForm(values=shown)

    body: dict[str, Any] = {name: shown[name] for name in _TEXT_FIELDS if shown[name]}
    for name in _NUMBER_FIELDS:
        if shown[name]:
            body[name] = int(shown[name]) if shown[name].isdigit() else shown[name]  # the model names a non-number
    ports, port_error = _ports(shown["ports"])
    if port_error:
        result.add_error("ports", port_error)
    else:
        body["ports"] = ports
    envs, env_error = _envs(env_lines)
    if env_error:
        result.add_error("envs", env_error)
    else:
        body["envs"] = envs

    try:
        request = CreateInstanceRequest.model_validate(body)
    except ValidationError as error:
        for item in error.errors():
            name = str(item["loc"][0]) if item["loc"] else GENERAL
            result.add_error(name, _message(item["msg"]))
        return None, result
    if result.errors:
        return None, result
    return request, result


def _message(text: str) -> str:
    """Pydantic's "Value error, ..." prefix adds nothing for a person."""
    return text.removeprefix("Value error, ")


def _ports(text: str) -> tuple[list[dict[str, Any]], str | None]:
    """`8888/http, 22/tcp` (type defaults to http) as the API's port objects."""
    ports = []
    for part in re.split(r"[,\s]+", text.strip()):
        if not part:
            continue
        match = _PORT.match(part)
        if not match:
            return [], f"'{part}' is not a port like 8888/http or 22/tcp"
        ports.append({"port": int(match.group(1)), "type": match.group(2) or "http"})
    return ports, None


def _envs(text: str) -> tuple[list[dict[str, Any]], str | None]:
    """`KEY=value` lines as the API's env objects; the error names the line by its key, never by its value."""
    envs = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        key, sign, value = line.partition("=")
        if not sign:
            return [], f"line {number} is not KEY=value"
        envs.append({"key": key.strip(), "value": value, "secret": True})
    return envs, None
