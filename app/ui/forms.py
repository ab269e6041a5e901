"""HTML forms of the dashboard: reading a urlencoded body, and turning a form into the API's request.

The create form is validated by the API's own `CreateInstanceRequest`, and the budget form by `BudgetLimits`, so a
field gets exactly the message the API's 422 would name it with; only the form's text shapes (numbers, `8888/http`
port lists, `KEY=value` lines) are read here first. The costs page's date range is read here too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

from fastapi import Request
from pydantic import ValidationError

from app.access.schemas import CreateKeyRequest
from app.billing.budgets import NO_TEAM, BudgetLimits
from app.billing.router import TEAM_PATTERN
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
class FormState:
    """What the person typed (secret values excepted: they are never shown back) and the errors by field."""

    values: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def add_error(self, name: str, message: str) -> None:
        """Keep the first error of a field."""
        self.errors.setdefault(name, message)


def parse_create_form(form: dict[str, str]) -> tuple[CreateInstanceRequest | None, FormState]:
    """The create request the form describes, or None with the errors beside each field."""
    shown = {name: form.get(name, "").strip() for name in (*_TEXT_FIELDS, *_NUMBER_FIELDS, "ports")}
    env_lines = form.get("envs", "")
    # Keys only: a value typed into the form is sent to the API and never rendered again.
    shown["envs"] = "\n".join(f"{line.partition('=')[0].strip()}=" for line in env_lines.splitlines() if line.strip())
    result = FormState(values=shown)

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


_BUDGET_FIELDS = ("maxGpus", "maxSpendPerDay", "maxSpendPerMonth")


def parse_budget_form(form: dict[str, str]) -> tuple[str | None, BudgetLimits | None, FormState]:
    """The team (None: instances without a team, spelt `-` as in the API's path) and the limits the form sets, or
    None with the errors beside each field; a blank limit is none (the stack's default then applies)."""
    shown = FormState(values={name: form.get(name, "").strip() for name in ("team", *_BUDGET_FIELDS)})
    team = shown.values["team"]
    if not re.fullmatch(TEAM_PATTERN, team) or len(team) > 64:
        shown.add_error("team", f"a team is 1-64 letters, digits, '_', '.' or '-' ('{NO_TEAM}': no team)")
    body: dict[str, Any] = {name: shown.values[name] for name in _BUDGET_FIELDS if shown.values[name]}
    if "maxGpus" in body and body["maxGpus"].isdigit():
        body["maxGpus"] = int(body["maxGpus"])  # any other text: the model names it as not an integer
    try:
        limits = BudgetLimits.model_validate(body)
    except ValidationError as error:
        for item in error.errors():
            shown.add_error(str(item["loc"][0]) if item["loc"] else GENERAL, _message(item["msg"]))
        return None, None, shown
    if shown.errors:
        return None, None, shown
    return (None if team == NO_TEAM else team), limits, shown


def parse_key_form(form: dict[str, str]) -> tuple[CreateKeyRequest | None, FormState]:
    """The key the form asks for, validated by `POST /api/keys`' own model and team rule (a blank team is none), or
    None with the API's messages beside each field."""
    shown = FormState(values={name: form.get(name, "").strip() for name in ("name", "team", "scope")})
    body = {name: value for name, value in shown.values.items() if value}
    try:
        request = CreateKeyRequest.model_validate(body)
    except ValidationError as error:
        for item in error.errors():
            shown.add_error(str(item["loc"][0]) if item["loc"] else GENERAL, _message(item["msg"]))
        return None, shown
    if (missing_team := request.missing_team()) is not None:
        shown.add_error("team", missing_team)
        return None, shown
    return request, shown


MAX_COST_DAYS = 366  # the chart's columns stay readable and a page's server time bounded


def parse_cost_range(from_text: str, to_text: str, today: date) -> tuple[float, float, FormState]:
    """The costs page's period [from, to + 1 day) in Unix seconds from two UTC days, both included (default: the
    last 14 days to today); the errors name the field."""
    shown = FormState(
        values={
            "from": from_text.strip() or (today - timedelta(days=13)).isoformat(),
            "to": to_text.strip() or today.isoformat(),
        }
    )
    days: dict[str, date] = {}
    for name in ("from", "to"):
        try:
            days[name] = date.fromisoformat(shown.values[name])
        except ValueError:
            shown.add_error(name, f"{shown.values[name]!r} is not a day like 2026-12-01")
    if len(days) == 2:
        if days["to"] < days["from"]:
            shown.add_error("to", "To must be on or after From")
        elif (days["to"] - days["from"]).days >= MAX_COST_DAYS:
            shown.add_error("from", f"the period is at most {MAX_COST_DAYS} days")
    if shown.errors:
        return 0.0, 0.0, shown
    start = datetime.combine(days["from"], datetime.min.time(), UTC).timestamp()
    end = datetime.combine(days["to"] + timedelta(days=1), datetime.min.time(), UTC).timestamp()
    return start, end, shown
