"""The pack against what `__main__.py` really registers (the infra suite's mocks), through pulumi-policy's analyzer.

The registrations go to the library's own Analyze/AnalyzeStack handlers as the engine would send them (inputs with
their secret envelopes, resource options), with the CLI's environment for a pack (stack name and config).
"""

from __future__ import annotations

import typing

import pulumi
import pulumi_docker as docker
import pytest
from pulumi.runtime.settings import ROOT
from pulumi_policy import EnforcementLevel, ResourceValidationPolicy

from app.core.config import Settings
from policy import rules
from tests.infra.harness import PROGRAM, TEST_SECRETS, ProgramMocks, ProgramRun, Registration
from tests.policy.pack import (
    ADVISORY,
    MANDATORY,
    POLICIES_BY_NAME,
    Analyzer,
    RawRecordingMonitor,
    api_container,
    edited,
    run_program,
)

API_POLICIES = {"api-restart-always", "api-healthcheck-start-period", "api-limits-without-swap", "api-image-by-id"}


def aiven_service(run: ProgramRun) -> Registration:
    return run.one(rules.AIVEN_VALKEY)


@pulumi.runtime.test
async def test_the_prod_program_passes_every_policy(analyzer) -> None:
    run = await run_program("prod")
    pack: Analyzer = analyzer(run)
    for registration in run.monitor.registrations:
        if registration.custom:
            assert pack.analyze(registration).diagnostics == [], registration.name
    # The API rules judged the API container (it gets Novita's key), rather than declining it.
    declined = pack.analyze(api_container(run)).not_applicable
    assert not API_POLICIES & set(declined), declined
    assert not {"aiven-valkey-protected", "aiven-valkey-allow-list-not-open"} & set(
        pack.analyze(aiven_service(run)).not_applicable
    )

    stack = pack.analyze_stack()
    assert stack.diagnostics == []
    # Every container carries its role label, so the replica count was judged (prod runs 2 replicas).
    assert all(rules.ROLE_LABEL in rules.labels(r.inputs) for r in run.all(rules.CONTAINER))
    assert "api-replicas" not in stack.not_applicable


def _set(path: str, value: object):
    def edit(document: dict) -> None:
        *parents, leaf = path.split(".")
        target = document
        for key in parents:
            target = target.setdefault(key, {})
        if value is None:
            target.pop(leaf, None)
        else:
            target[leaf] = value

    return edit


def _add_env(entry: str):
    return lambda document: document["envs"].append(entry)


MUTATIONS = {
    "restart": ("api", _set("restart", "unless-stopped"), "api-restart-always", MANDATORY),
    "start period": ("api", _set("healthcheck.startPeriod", "1m0s"), "api-healthcheck-start-period", MANDATORY),
    "no healthcheck": ("api", _set("healthcheck", None), "api-healthcheck-start-period", MANDATORY),
    "swap": ("api", _set("memorySwap", None), "api-limits-without-swap", MANDATORY),
    "cpus": ("api", _set("cpus", None), "api-limits-without-swap", MANDATORY),
    "image tag": ("api", _set("image", "novita-gpu-api:prod"), "api-image-by-id", MANDATORY),
    "credential in env": (
        "api",
        _add_env("WEBHOOK_URL=https://hook:pw@hooks.example.com/in"),
        "plain-env-has-no-credential",
        MANDATORY,
    ),
    "secret-named env": (
        "api",
        _add_env("SIGNING_SECRET=not-so-secret"),
        "secret-named-env-is-contract-secret",
        ADVISORY,
    ),
    "termination protection": ("aiven", _set("terminationProtection", False), "aiven-valkey-protected", MANDATORY),
    "open allow-list": (
        "aiven",
        _set("valkeyUserConfig.ipFilterStrings", ["0.0.0.0/0"]),
        "aiven-valkey-allow-list-not-open",
        MANDATORY,
    ),
}


@pytest.mark.parametrize("mutation", list(MUTATIONS))
@pulumi.runtime.test
async def test_each_policy_catches_its_lesson_in_the_real_prod_registration(mutation: str, analyzer) -> None:
    target, edit, policy, level = MUTATIONS[mutation]
    run = await run_program("prod")
    pack: Analyzer = analyzer(run)
    registration = api_container(run) if target == "api" else aiven_service(run)
    diagnostics = pack.analyze(registration, edited(pack.raw(registration), edit)).diagnostics
    assert [(d.policy, d.level) for d in diagnostics] == [(policy, level)]


@pulumi.runtime.test
async def test_pulumi_protect_off_on_aiven_is_caught(analyzer) -> None:
    run = await run_program("prod")
    assert aiven_service(run).protect  # the program protects it; the pack would notice if it stopped
    diagnostics = analyzer(run).analyze(aiven_service(run), protect=False).diagnostics
    assert [(d.policy, d.level) for d in diagnostics] == [("aiven-valkey-protected", MANDATORY)]


@pulumi.runtime.test
async def test_the_pack_is_stricter_than_the_programs_allow_any_ip_override(analyzer) -> None:
    # The program lets an operator open Aiven to everyone in production with valkeyAllowAnyIp; the pack refuses it
    # unless its policy config lowers that one policy to advisory (README).
    run = await run_program("prod", {"valkeyAllowAnyIp": "true", "valkeyIpAllowList": '["0.0.0.0/0"]'})
    diagnostics = analyzer(run).analyze(aiven_service(run)).diagnostics
    assert [(d.policy, d.level) for d in diagnostics] == [("aiven-valkey-allow-list-not-open", MANDATORY)]


@pulumi.runtime.test
async def test_the_dev_stack_is_not_judged(analyzer) -> None:
    run = await run_program("dev")
    pack: Analyzer = analyzer(run)
    analysis = pack.analyze(api_container(run))
    assert analysis.diagnostics == []  # dev restarts unless-stopped with a 1m0s start period: fine for dev
    assert all("not a production stack" in analysis.not_applicable[name] for name in API_POLICIES)
    assert "not a production stack" in pack.analyze_stack().not_applicable["api-replicas"]


# ---- secrets: what the pack can and cannot see -------------------------------------------------------------


@pulumi.runtime.test
async def test_the_contracts_secret_variables_are_sent_as_pulumi_secrets_and_no_others() -> None:
    # The pack exempts SECRET_ENV_NAMES because it cannot see secretness (next test); this is what makes that safe.
    for stack_name in ("prod", "dev"):
        run = await run_program(stack_name)
        for registration in run.all(rules.CONTAINER):
            for index, entry in enumerate(registration.inputs.get("envs", [])):
                name = entry.split("=", 1)[0]
                assert registration.is_secret(f"envs[{index}]") == (name in rules.SECRET_ENV_NAMES), (stack_name, name)


@pulumi.runtime.test
async def test_pulumi_policy_hands_secret_inputs_to_a_policy_as_plain_values(analyzer) -> None:
    # Why the secret check judges values and names: a policy never learns that an input was secret.
    run = await run_program("prod")
    container = api_container(run)
    index = next(i for i, e in enumerate(container.inputs["envs"]) if e.startswith("NOVITA_API_KEY="))
    assert container.is_secret(f"envs[{index}]")  # sent wrapped as a secret...
    seen: list[object] = []
    probe = ResourceValidationPolicy(
        name="probe",
        description="records envs",
        enforcement_level=EnforcementLevel.ADVISORY,
        validate=lambda args, report: seen.append(args.props["envs"][index]) if args.name == container.name else None,
    )
    pack: Analyzer = analyzer(run)
    pack.servicer = type(pack.servicer)("probe-pack", "0.0.0", [probe], EnforcementLevel.ADVISORY)
    pack.analyze(container)
    assert seen == [f"NOVITA_API_KEY={TEST_SECRETS['novitaApiKey']}"]  # ...and seen as a plain string


def test_secret_env_names_are_the_apis_secret_settings() -> None:
    secret_settings = {
        name.upper()
        for name, field in Settings.model_fields.items()
        if "SecretStr"
        in {getattr(arg, "__name__", "") for arg in (field.annotation, *typing.get_args(field.annotation))}
    }
    assert secret_settings == rules.SECRET_ENV_NAMES


# ---- the label convention, in the provider's shape ---------------------------------------------------------


@pulumi.runtime.test
async def test_role_labels_are_read_in_the_shape_the_docker_sdk_registers(analyzer) -> None:
    # Labels are what issue 11 adds to every container; register one with the SDK to pin their wire shape.
    monitor = RawRecordingMonitor(ProgramMocks())
    ROOT.set(None)
    pulumi.runtime.set_mocks(ProgramMocks(), project=rules.PROJECT, stack="prod", preview=False, monitor=monitor)
    replica = docker.Container(
        "replica",
        image="sha256:" + "0" * 64,
        restart="unless-stopped",
        labels=[
            docker.ContainerLabelArgs(label=rules.ROLE_LABEL, value="api"),
            docker.ContainerLabelArgs(label="novita-gpu-api.stack", value="prod"),
        ],
    )
    await replica.urn.future()  # registered
    [registration] = [r for r in monitor.registrations if r.type == rules.CONTAINER]
    assert rules.labels(registration.inputs) == {rules.ROLE_LABEL: "api", "novita-gpu-api.stack": "prod"}

    run = ProgramRun("prod", {f"{rules.PROJECT}:appEnv": "production"}, [])
    run.monitor = monitor
    diagnostics = analyzer(run).analyze(registration).diagnostics
    assert {d.policy for d in diagnostics} == {
        "api-restart-always",
        "api-healthcheck-start-period",
        "api-limits-without-swap",
    }


def test_every_policy_is_in_the_readme() -> None:
    readme = (PROGRAM.parent / "README.md").read_text()
    assert [name for name in POLICIES_BY_NAME if f"`{name}`" not in readme] == []
