"""Runs the real Pulumi program (`__main__.py`) under Pulumi mocks and records what it registers.

Why `runpy` per run: `__main__.py` registers resources at import time, and each test needs its own stack and
config. Re-executing the file with `runpy.run_path` after a fresh `set_mocks` (new monitor, new root stack) and
`set_all_config` runs exactly what `pulumi up` runs, with no module cache to reset; `components.*` stay imported
because they hold no state.

Used by the mocks suite (conftest.py) and by `python -m tests.infra.render` (the real-Docker tests).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import runpy
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import yaml
from google.protobuf import json_format
from pulumi.runtime.mocks import MockMonitor
from pulumi.runtime.settings import ROOT
from pulumi.runtime.stack import Stack, wait_for_rpcs

from components.config import PROJECT

REPO_ROOT = Path(__file__).resolve().parents[2]
PROGRAM = REPO_ROOT / "__main__.py"
# Where the stack files are read from; the test of the tests points it at edited copies.
STACK_FILES_DIR_ENV = "INFRA_STACK_FILES_DIR"

# Fake secret values, distinctive so a leak is easy to spot.
TEST_SECRETS = {
    "novitaApiKey": "test-novita-key-3f9c",
    "apiKeys": "ops:test-client-key-8d21",
    "apiKeyHashSecret": "test-api-key-hash-secret-2b7f-0000000000",
    "aivenToken": "test-aiven-token-51ab",
}
MOCK_VALKEY_PASSWORD = "mock-valkey-password-77e0"
MOCK_VALKEY_PORT = 13345
MOCK_VALKEY_USER_PASSWORD = "mock/app+user:pass@77"  # URL-reserved characters on purpose

_SECRET_SIG_KEY = "4dabf18193072939515e22adb298388d"
_SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"


# ---- config ------------------------------------------------------------------------------------------------


def _config_string(value: Any) -> str:
    """A stack-file value as the engine hands it to the program: strings, with objects as JSON."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def stack_file(stack: str) -> Path:
    """The stack file the suite reads: the repo's, or an edited copy under $INFRA_STACK_FILES_DIR."""
    return Path(os.environ.get(STACK_FILES_DIR_ENV) or REPO_ROOT) / f"Pulumi.{stack}.yaml"


def stack_config(
    stack: str,
    overrides: Mapping[str, str | None] | None = None,
    secrets: Mapping[str, str | None] | None = None,
) -> tuple[dict[str, str], list[str]]:
    """Config of a stack file plus secrets, as `set_all_config` takes it.

    `overrides`/`secrets` map short keys to values; None removes the key. Encrypted (`secure:`) values in the
    file are dropped: tests supply their own secrets.
    """
    document = yaml.safe_load(stack_file(stack).read_text()) or {}
    config: dict[str, str] = {}
    for full_key, value in (document.get("config") or {}).items():
        if isinstance(value, dict) and "secure" in value:
            continue
        namespace, _, key = full_key.partition(":")
        if namespace != PROJECT:
            raise ValueError(f"{stack_file(stack)}: unexpected key {full_key} (only {PROJECT}:* keys are read)")
        config[key] = _config_string(value)
    for key, value in (overrides or {}).items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    secret_values: dict[str, str | None] = {**TEST_SECRETS, **(secrets or {})}
    secret_keys = []
    for key, value in secret_values.items():
        if value is not None:
            config[key] = value
            secret_keys.append(f"{PROJECT}:{key}")
    return {f"{PROJECT}:{key}": value for key, value in config.items()}, secret_keys


# ---- mocks -------------------------------------------------------------------------------------------------


def _digest(*parts: Any) -> str:
    return "sha256:" + hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class ProgramMocks(pulumi.runtime.Mocks):
    """Echo inputs and add the outputs the program reads, shaped like the providers' (camelCase)."""

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict]:
        outputs = dict(args.inputs)
        if args.typ == "docker:index/image:Image":
            outputs["repoDigest"] = _digest(args.inputs)  # the local image ID of a skip_push build
        elif args.typ == "docker:index/container:Container" and "name" not in args.inputs:
            # Pulumi's auto-naming: the resource name plus a random suffix (here derived from the inputs).
            outputs["name"] = f"{args.name}-{_digest(args.inputs)[7:14]}"
        elif args.typ == "docker:index/remoteImage:RemoteImage":
            outputs["imageId"] = _digest(args.inputs.get("name"))
        elif args.typ == "aiven:index/valkey:Valkey":
            host = f"{args.inputs['serviceName']}-{args.inputs['project']}.aivencloud.com"
            outputs.update(
                serviceHost=host,
                servicePort=MOCK_VALKEY_PORT,
                servicePassword=MOCK_VALKEY_PASSWORD,
                serviceUri=f"valkeys://default:{MOCK_VALKEY_PASSWORD}@{host}:{MOCK_VALKEY_PORT}",
            )
        elif args.typ == "aiven:index/valkeyUser:ValkeyUser":
            outputs.update(password=MOCK_VALKEY_USER_PASSWORD, type="normal")
        return f"{args.name}-id", outputs

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict, list[tuple[str, str]] | None]:
        return {}, []  # no check failures (the SDK iterates this list, so not None)


def _plain(value: Any, path: str, secret_paths: set[str]) -> Any:
    """Unwrap the engine's secret envelopes (recording where they were) and give ints back their type."""
    if isinstance(value, dict):
        if value.get(_SECRET_SIG_KEY) == _SECRET_SIG:
            secret_paths.add(path)
            return _plain(value.get("value"), path, secret_paths)
        return {key: _plain(item, f"{path}.{key}" if path else key, secret_paths) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item, f"{path}[{index}]", secret_paths) for index, item in enumerate(value)]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


@dataclass
class Registration:
    """One RegisterResource call: what the engine would receive for a resource."""

    type: str
    name: str
    urn: str
    custom: bool
    parent: str
    inputs: dict
    secret_paths: set[str]
    protect: bool
    delete_before_replace: bool
    replace_on_changes: list[str]
    ignore_changes: list[str]
    provider: str
    dependencies: list[str]

    def is_secret(self, path: str) -> bool:
        """True if the value at `path` (e.g. `envs[8]`) or a parent of it was sent as a secret."""
        return any(path == p or path.startswith(p + ".") or path.startswith(p + "[") for p in self.secret_paths)

    def to_json(self) -> dict:
        """The render CLI's view of this resource."""
        return {
            "type": self.type,
            "name": self.name,
            "urn": self.urn,
            "custom": self.custom,
            "parent": self.parent or None,
            "inputs": self.inputs,
            "secretInputs": sorted(self.secret_paths),
            "options": {
                "protect": self.protect,
                "deleteBeforeReplace": self.delete_before_replace,
                "replaceOnChanges": self.replace_on_changes,
                "ignoreChanges": self.ignore_changes,
                "provider": self.provider or None,
                "dependsOn": self.dependencies,
            },
        }


class RecordingMonitor(MockMonitor):
    """A mock monitor that keeps every registration, options included (Mocks.new_resource never sees options)."""

    def __init__(self, mocks: pulumi.runtime.Mocks) -> None:
        super().__init__(mocks)
        self.registrations: list[Registration] = []

    def RegisterResource(self, request: Any) -> Any:  # gRPC's method name
        response = super().RegisterResource(request)
        secret_paths: set[str] = set()
        inputs = _plain(json_format.MessageToDict(request.object), "", secret_paths)
        self.registrations.append(
            Registration(
                type=request.type,
                name=request.name,
                urn=response.urn,
                custom=request.custom,
                parent=request.parent,
                inputs=inputs,
                secret_paths=secret_paths,
                protect=request.protect,
                delete_before_replace=request.deleteBeforeReplace,
                replace_on_changes=list(request.replaceOnChanges),
                ignore_changes=list(request.ignoreChanges),
                provider=request.provider,
                dependencies=list(request.dependencies),
            )
        )
        return response


# ---- a program run -----------------------------------------------------------------------------------------


@dataclass
class Output:
    """A resolved stack output."""

    value: Any
    secret: bool


@dataclass
class ProgramRun:
    """One execution of `__main__.py` for a stack under mocks (preview=False, so every apply runs)."""

    stack: str
    config: dict[str, str]
    secret_keys: list[str]
    monitor: RecordingMonitor = field(init=False)
    outputs: dict[str, Output] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.monitor = RecordingMonitor(ProgramMocks())

    @classmethod
    def for_stack(
        cls,
        stack: str,
        overrides: Mapping[str, str | None] | None = None,
        secrets: Mapping[str, str | None] | None = None,
    ) -> ProgramRun:
        """A run with the stack file's config, `overrides` on top, and test secrets."""
        config, secret_keys = stack_config(stack, overrides, secrets)
        return cls(stack, config, secret_keys)

    async def run(self) -> ProgramRun:
        """Execute the program and wait until every registration and stack output has resolved."""
        ROOT.set(None)  # a fresh root stack, so outputs of earlier runs don't mix in
        pulumi.runtime.set_mocks(ProgramMocks(), project=PROJECT, stack=self.stack, preview=False, monitor=self.monitor)
        pulumi.runtime.set_all_config(self.config, self.secret_keys)
        try:
            with contextlib.chdir(REPO_ROOT):  # the program's paths are relative to the project directory
                runpy.run_path(str(PROGRAM), run_name="__main__")
        finally:
            await wait_for_rpcs(await_all_outstanding_tasks=False)  # all=True would wait for this very task
        root = pulumi.runtime.get_root_resource()
        for name, value in (root.outputs if isinstance(root, Stack) else {}).items():
            output = pulumi.Output.from_input(value)
            self.outputs[name] = Output(value=await output.future(), secret=await output.is_secret())
        return self

    # -- queries used by the tests --

    def all(self, type_: str) -> list[Registration]:
        """Every registration of a resource type (e.g. `docker:index/container:Container`)."""
        return [r for r in self.monitor.registrations if r.type == type_]

    def one(self, type_: str, name: str | None = None) -> Registration:
        """The single registration of a type (optionally with a given logical name)."""
        found = [r for r in self.all(type_) if name is None or r.name == name]
        if len(found) != 1:
            raise AssertionError(f"expected one {type_} {name or ''}, found {[r.name for r in found]}")
        return found[0]

    def by_urn(self, urn: str) -> Registration:
        """The registration with a URN."""
        return next(r for r in self.monitor.registrations if r.urn == urn)


def execute(coroutine_factory: Callable[[], Awaitable[Any]]) -> None:
    """Run a coroutine the way `@pulumi.runtime.test` runs a test (for the render CLI, outside pytest)."""
    pulumi.runtime.test(coroutine_factory)()
