"""Runs the production policy pack (policy/rules.py) the way pulumi-policy runs it, with no Pulumi CLI.

Two ways in:
- `validate(name, resource(...))` calls one policy with the `ResourceValidationArgs` the library builds in its
  Analyze handler: props behind its unknown-checking proxy, options as `PolicyResourceOptions`.
- `Analyzer` feeds RPC requests to the library's own analyzer servicer (the object `PolicyPack` serves over gRPC),
  so the program's registrations go through the library's deserialisation: secret envelopes, unknowns, options.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pytest
from google.protobuf import json_format, struct_pb2
from pulumi.runtime import proto
from pulumi_policy import (
    EnforcementLevel,
    PolicyCustomTimeouts,
    PolicyResource,
    PolicyResourceOptions,
    ResourceValidationArgs,
    StackValidationArgs,
    StackValidationPolicy,
)
from pulumi_policy.policy import _NotApplicableError, _PolicyAnalyzerServicer
from pulumi_policy.proxy import unknown_checking_proxy

from policy import rules
from tests.infra.harness import ProgramMocks, ProgramRun, RecordingMonitor, Registration

POLICIES_BY_NAME = {policy.name: policy for policy in rules.POLICIES}
MANDATORY = proto.EnforcementLevel.Value("MANDATORY")
ADVISORY = proto.EnforcementLevel.Value("ADVISORY")


# ---- one policy, args built like the library builds them ---------------------------------------------------


@dataclass
class Outcome:
    """What one policy said about one resource (or stack)."""

    violations: list[str] = field(default_factory=list)
    not_applicable: str | None = None


def _options(protect: bool = False) -> PolicyResourceOptions:
    return PolicyResourceOptions(protect, [], None, [], PolicyCustomTimeouts(0, 0, 0), [], None)


def api_container(run: ProgramRun) -> Registration:
    """The first API replica (by its role label)."""
    replicas = [r for r in run.all(rules.CONTAINER) if rules.labels(r.inputs).get(rules.ROLE_LABEL) == rules.API_ROLE]
    return min(replicas, key=lambda r: r.name)


def resource(type_: str, props: dict, name: str = "api-container", protect: bool = False) -> ResourceValidationArgs:
    """One resource's validation args, as the library's Analyze handler builds them."""
    return ResourceValidationArgs(
        type_, unknown_checking_proxy(props), f"urn:test::{name}", name, _options(protect), None
    )


def stack(*resources: tuple[str, dict]) -> StackValidationArgs:
    """A stack's validation args, as the library's AnalyzeStack handler builds them."""
    return StackValidationArgs(
        [
            PolicyResource(
                type_, unknown_checking_proxy(props), f"urn:test::r{i}", f"r{i}", _options(), None, None, [], {}
            )
            for i, (type_, props) in enumerate(resources)
        ],
        {},
    )


def validate(policy_name: str, args: ResourceValidationArgs | StackValidationArgs) -> Outcome:
    """Run one policy of the pack; `not_applicable` holds the reason when it declined."""
    outcome = Outcome()

    def report(message: str, urn: str | None = None) -> None:
        outcome.violations.append(message)

    policy = POLICIES_BY_NAME[policy_name]
    try:
        if isinstance(policy, StackValidationPolicy):
            assert isinstance(args, StackValidationArgs), f"{policy_name} judges a stack, not one resource"
            policy.validate(args, report)
        else:
            assert isinstance(args, ResourceValidationArgs), f"{policy_name} judges one resource, not a stack"
            policy.validate(args, report)
    except _NotApplicableError as error:
        outcome.not_applicable = error.reason
    return outcome


# ---- the library's analyzer, fed the program's registrations -----------------------------------------------


@dataclass
class Diagnostic:
    policy: str
    level: int
    urn: str
    message: str


@dataclass
class Analysis:
    diagnostics: list[Diagnostic]
    not_applicable: dict[str, str]  # policy name -> reason


class RawRecordingMonitor(RecordingMonitor):
    """The harness's recording monitor, also keeping each registration's inputs as sent (secret envelopes kept)."""

    def __init__(self, mocks: pulumi.runtime.Mocks) -> None:
        super().__init__(mocks)
        self.raw: dict[str, struct_pb2.Struct] = {}

    def RegisterResource(self, request: Any) -> Any:  # gRPC's method name
        response = super().RegisterResource(request)
        raw = struct_pb2.Struct()
        raw.CopyFrom(request.object)
        self.raw[response.urn] = raw
        return response


async def run_program(stack_name: str, overrides: Mapping[str, str | None] | None = None) -> ProgramRun:
    """`__main__.py` for a stack under the infra suite's mocks, with raw inputs kept."""
    run = ProgramRun.for_stack(stack_name, overrides)
    run.monitor = RawRecordingMonitor(ProgramMocks())
    return await run.run()


class Analyzer:
    """The pack as pulumi-policy serves it, configured for a program run the way the CLI configures it."""

    def __init__(self, run: ProgramRun, monkeypatch: pytest.MonkeyPatch) -> None:
        self.run = run
        self.servicer = _PolicyAnalyzerServicer(
            "novita-gpu-api-production", "0.0.0", list(rules.POLICIES), EnforcementLevel.MANDATORY
        )
        # The CLI's environment for a policy pack: stack, project and the stack's (decrypted) config.
        monkeypatch.setenv("PULUMI_PROJECT", rules.PROJECT)
        monkeypatch.setenv("PULUMI_STACK", run.stack)
        monkeypatch.setenv("PULUMI_DRY_RUN", "false")
        monkeypatch.setenv("PULUMI_CONFIG", json.dumps(run.config))

    def raw(self, registration: Registration) -> struct_pb2.Struct:
        return self.run.monitor.raw[registration.urn]  # type: ignore[attr-defined]

    @staticmethod
    def _options(registration: Registration) -> proto.AnalyzerResourceOptions:
        return proto.AnalyzerResourceOptions(
            protect=registration.protect,
            ignoreChanges=registration.ignore_changes,
            deleteBeforeReplace=registration.delete_before_replace,
            deleteBeforeReplaceDefined=True,
            parent=registration.parent,
        )

    @staticmethod
    def _analysis(response: Any) -> Analysis:
        return Analysis(
            diagnostics=[Diagnostic(d.policyName, d.enforcementLevel, d.urn, d.message) for d in response.diagnostics],
            not_applicable={n.policy_name: n.reason for n in response.not_applicable},
        )

    def analyze(
        self, registration: Registration, properties: struct_pb2.Struct | None = None, protect: bool | None = None
    ) -> Analysis:
        """The pack's resource policies on one registration (or on `properties` in its place)."""
        options = self._options(registration)
        if protect is not None:
            options.protect = protect
        request = proto.AnalyzeRequest(
            type=registration.type,
            urn=registration.urn,
            name=registration.name,
            properties=properties if properties is not None else self.raw(registration),
            options=options,
        )
        return self._analysis(self.servicer.Analyze(request, None))

    def analyze_stack(self, replace: dict[str, struct_pb2.Struct] | None = None) -> Analysis:
        """The pack's stack policies on every custom resource the program registered (URN -> properties to swap)."""
        resources = [
            proto.AnalyzerResource(
                urn=r.urn,
                type=r.type,
                name=r.name,
                options=self._options(r),
                parent=r.parent,
                properties=(replace or {}).get(r.urn, self.raw(r)),
            )
            for r in self.run.monitor.registrations
            if r.custom
        ]
        return self._analysis(self.servicer.AnalyzeStack(proto.AnalyzeStackRequest(resources=resources), None))


def edited(raw: struct_pb2.Struct, edit: Callable[[dict], None]) -> struct_pb2.Struct:
    """A copy of registered inputs with `edit` applied to their JSON form (secret envelopes stay as they were)."""
    document = json_format.MessageToDict(raw)
    edit(document)
    result = struct_pb2.Struct()
    json_format.ParseDict(document, result)
    return result
