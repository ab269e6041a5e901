"""StackSettings: canonical values, the config schema in Pulumi.yaml, the stack files, and every config error."""

from __future__ import annotations

import pulumi
import pytest
import yaml

from components.config import KEYS, PROJECT, StackConfigError, StackSettings
from components.config.models import Concern
from components.config.validators import canonical_cpus, go_duration, parse_duration_ms
from tests.infra.harness import REPO_ROOT, ProgramRun, stack_file


@pulumi.runtime.test
def test_durations_are_written_the_way_docker_reads_them_back() -> None:
    written = {
        text: go_duration(parse_duration_ms(text))
        for text in ("30s", "10s", "60s", "120s", "90s", "2m", "1m30s", "500ms", "1h", "1.5s", "0")
    }
    assert written == {
        "30s": "30s",
        "10s": "10s",
        "60s": "1m0s",
        "120s": "2m0s",
        "90s": "1m30s",
        "2m": "2m0s",
        "1m30s": "1m30s",
        "500ms": "500ms",
        "1h": "1h0m0s",
        "1.5s": "1.5s",
        "0": "0s",
    }


@pulumi.runtime.test
def test_cpus_are_written_the_way_the_provider_reads_them_back() -> None:
    assert [canonical_cpus(text) for text in ("0.5", "0.50", "1", "2", "1.25", ".5")] == [
        "0.5",
        "0.5",
        "1.0",
        "2.0",
        "1.25",
        "0.5",
    ]
    for bad in ("0", "-1", "abc", "1e-12", "nan"):
        with pytest.raises(ValueError):
            canonical_cpus(bad)


@pulumi.runtime.test
def test_pulumi_yaml_declares_every_key_the_program_reads_with_the_same_default() -> None:
    project = yaml.safe_load((REPO_ROOT / "Pulumi.yaml").read_text())
    assert project["name"] == PROJECT
    assert project["runtime"] == {"name": "python", "options": {"toolchain": "pip", "virtualenv": ".venv"}}
    declared = project["config"]
    assert set(declared) == set(KEYS)
    for key, spec in KEYS.items():
        entry = declared[key]
        assert entry["type"] == spec.type, key
        assert entry["description"], key
        if spec.default is None:
            assert entry.get("secret") is True and "default" not in entry, key
        else:
            assert entry["default"] == spec.default and not entry.get("secret"), key


@pytest.mark.parametrize("stack", ["dev", "prod"])
@pulumi.runtime.test
def test_stack_files_hold_no_secret(stack: str) -> None:
    config = yaml.safe_load(stack_file(stack).read_text())["config"]
    for key, spec in KEYS.items():
        value = config.get(f"{PROJECT}:{key}")
        if spec.secret and value is not None:
            assert isinstance(value, dict) and "secure" in value, f"{key} in plain text in Pulumi.{stack}.yaml"
    assert all(key.startswith(f"{PROJECT}:") for key in config)


def _accepted_by_the_cli(declared_type: str, value: object) -> bool:
    """The Pulumi CLI's check of a stack value against the project's declared type (ValidateConfigValue)."""
    if declared_type == "string":
        return isinstance(value, str)
    if declared_type == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, str) and value.lstrip("-").isdigit()
        )
    if declared_type == "boolean":
        return isinstance(value, bool) or value in ("true", "false")
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


@pytest.mark.parametrize("stack", ["dev", "prod"])
@pulumi.runtime.test
def test_stack_file_keys_are_declared_with_matching_types(stack: str) -> None:
    declared = yaml.safe_load((REPO_ROOT / "Pulumi.yaml").read_text())["config"]
    for full_key, value in yaml.safe_load(stack_file(stack).read_text())["config"].items():
        key = full_key.removeprefix(f"{PROJECT}:")
        assert key in declared, f"{full_key} is not declared in Pulumi.yaml (the CLI refuses the stack)"
        if not (isinstance(value, dict) and "secure" in value):
            assert _accepted_by_the_cli(declared[key]["type"], value), (
                f"{full_key}: {value!r} is not a {declared[key]['type']}"
            )


# (stack, overrides, secrets, key named, words the message must contain)
CONFIG_ERRORS = [
    ("dev", {"valkeyMode": "redis"}, {}, "valkeyMode", "local, aiven"),
    ("dev", {"restartPolicy": "sometimes"}, {}, "restartPolicy", "no, on-failure, always, unless-stopped"),
    ("prod", {"restartPolicy": "unless-stopped"}, {}, "restartPolicy", "production requires 'always'"),
    ("prod", {"restartPolicy": "on-failure"}, {}, "restartPolicy", "production requires 'always'"),
    ("dev", {"healthcheckTimeout": "30s"}, {}, "healthcheckTimeout", "shorter than healthcheckInterval"),
    ("dev", {"healthcheckTimeout": "45s"}, {}, "healthcheckTimeout", "shorter than healthcheckInterval"),
    ("dev", {"healthcheckInterval": "30 seconds"}, {}, "healthcheckInterval", "not a duration"),
    ("dev", {"healthcheckRetries": "0"}, {}, "healthcheckRetries", "at least 1"),
    ("dev", {"memoryMb": "127"}, {}, "memoryMb", "at least 128 MB"),
    ("dev", {"memoryMb": "lots"}, {}, "memoryMb", "not a whole number"),
    ("dev", {"cpus": "0"}, {}, "cpus", "positive number of CPUs"),
    ("dev", {"cpus": "-0.5"}, {}, "cpus", "positive number of CPUs"),
    ("dev", {"apiPort": "0"}, {}, "apiPort", "between 1 and 65535"),
    ("dev", {"apiPort": "65536"}, {}, "apiPort", "between 1 and 65535"),
    ("dev", {"valkeyPort": "70000"}, {}, "valkeyPort", "between 1 and 65535"),
    ("dev", {"networkMode": "overlay"}, {}, "networkMode", "bridge, host"),
    ("dev", {}, {"novitaApiKey": None}, "novitaApiKey", "missing required secret"),
    ("prod", {}, {"apiKeys": None}, "apiKeys", "missing required secret"),
    ("prod", {}, {"apiKeyHashSecret": None}, "apiKeyHashSecret", "missing required secret"),
    ("dev", {}, {"apiKeyHashSecret": "short-secret-0123"}, "apiKeyHashSecret", "at least 32 characters"),
    ("prod", {}, {"aivenToken": None}, "aivenToken", "missing required secret"),
    ("dev", {"novitaApiKey": "plain-key"}, {"novitaApiKey": None}, "novitaApiKey", "plain text"),
    ("prod", {"faultInjection": "true"}, {}, "faultInjection", "refused when appEnv is production"),
    ("prod", {"valkeyIpAllowList": '["0.0.0.0/0"]'}, {}, "valkeyIpAllowList", "0.0.0.0/0 is refused in production"),
    ("prod", {"valkeyIpAllowList": "[]"}, {}, "valkeyIpAllowList", "at least one CIDR"),
    ("prod", {"valkeyIpAllowList": '["203.0.113.10/32", "::/0"]'}, {}, "valkeyIpAllowList", "0.0.0.0/0 is refused"),
    ("prod", {"valkeyAppUser": "api user"}, {}, "valkeyAppUser", "letters, digits, _ or -"),
    ("prod", {"valkeyAppUser": "default"}, {}, "valkeyAppUser", "Aiven's admin user"),
    ("dev", {"valkeyAppUser": "ngpu-api"}, {}, "valkeyAppUser", "only with valkeyMode aiven"),
    ("prod", {"valkeyIpAllowList": '["10.0.0.300/32"]'}, {}, "valkeyIpAllowList", "not a CIDR"),
    ("prod", {"aivenProject": None}, {}, "aivenProject", "must not be empty"),
    ("prod", {"aivenMaintenanceDow": "someday"}, {}, "aivenMaintenanceDow", "monday"),
    ("dev", {"imagePush": "true"}, {}, "registryServer", "required when imagePush is true"),
    ("dev", {"containerUser": "0"}, {}, "containerUser", "non-root"),
    ("dev", {"appEnv": "staging"}, {}, "appEnv", "development, production"),
    # The API's runtime settings (item 1 of issue 12): each refused at deploy time, not at the container's start.
    ("dev", {"logLevel": "verbose"}, {}, "logLevel", "DEBUG, INFO, WARNING, ERROR"),
    ("dev", {"docsEnabled": "yes"}, {}, "docsEnabled", "use true or false, or leave it empty"),
    ("dev", {"maxRequestBodyBytes": "0"}, {}, "maxRequestBodyBytes", "at least 1"),
    ("dev", {"rateLimitRequests": "-1"}, {}, "rateLimitRequests", "at least 0"),
    ("dev", {"rateLimitWindowSeconds": "7200"}, {}, "rateLimitWindowSeconds", "between 1 and 3600"),
    (
        "dev",
        {"corsAllowOrigins": '["https://app.example.com/path"]'},
        {},
        "corsAllowOrigins",
        "is not an origin like https://app.example.com",
    ),
    ("dev", {"corsAllowOrigins": "https://app.example.com"}, {}, "corsAllowOrigins", "must be a list of origins"),
    ("dev", {"jobConcurrency": "0"}, {}, "jobConcurrency", "at least 1"),
    ("dev", {"jobMaxAttempts": "many"}, {}, "jobMaxAttempts", "not a whole number"),
    ("dev", {"jobVisibilityTimeoutSeconds": "0"}, {}, "jobVisibilityTimeoutSeconds", "at least 1 s"),
    ("dev", {"shutdownGraceSeconds": "30"}, {}, "shutdownGraceSeconds", "shorter than stopGraceSeconds (30 >= 30)"),
    ("dev", {"placementRegionOrder": '["us-ca-6", "us ca 7"]'}, {}, "placementRegionOrder", "is not a cluster id"),
    ("dev", {"placementRegionOrder": '["us-ca-6", "us-ca-6"]'}, {}, "placementRegionOrder", "lists a cluster id twice"),
    ("dev", {"readinessEnabled": "yes"}, {}, "readinessEnabled", "use true or false"),
    ("dev", {"readinessMaxWaitSeconds": "0"}, {}, "readinessMaxWaitSeconds", "at least 1 s"),
    ("dev", {"provisioningTimeoutSeconds": "-5"}, {}, "provisioningTimeoutSeconds", "at least 1 s"),
    ("dev", {"autoStopEnabled": "on"}, {}, "autoStopEnabled", "use true or false"),
    ("dev", {"autoStopIdleSeconds": "0"}, {}, "autoStopIdleSeconds", "at least 1 s"),
    ("dev", {"autoStopStartupGraceSeconds": "-1"}, {}, "autoStopStartupGraceSeconds", "at least 0 s"),
    ("dev", {"autoStopDryRun": "1"}, {}, "autoStopDryRun", "use true or false"),
    ("dev", {"maxInstanceLifetimeSeconds": "1.5"}, {}, "maxInstanceLifetimeSeconds", "not a whole number"),
    ("dev", {"budgetDefaultMaxGpus": "ten"}, {}, "budgetDefaultMaxGpus", "empty (no limit) or a whole number"),
    ("dev", {"budgetDefaultMaxSpendPerDay": "$50"}, {}, "budgetDefaultMaxSpendPerDay", "or USD like 250.00"),
    ("dev", {"budgetDefaultMaxSpendPerMonth": "1e6"}, {}, "budgetDefaultMaxSpendPerMonth", "or USD like 250.00"),
    ("dev", {"budgetAutoStop": "yes"}, {}, "budgetAutoStop", "use true or false"),
    ("dev", {"spotRecoveryEnabled": "maybe"}, {}, "spotRecoveryEnabled", "use true or false"),
    ("dev", {"spotRecoveryMinIntervalSeconds": "0"}, {}, "spotRecoveryMinIntervalSeconds", "at least 1 s"),
    ("dev", {"webhookUrl": "ftp://hooks.example.com"}, {}, "webhookUrl", "expected an http(s) URL"),
    (
        "dev",
        {"webhookUrl": "https://hooks.example.com/x"},
        {},
        "webhookSecret",
        "missing required secret when webhookUrl is set",
    ),
    (
        "dev",
        {"webhookUrl": "https://hooks.example.com/x"},
        {"webhookSecret": "short-secret-1"},
        "webhookSecret",
        "at least 24 characters",
    ),
    (
        "dev",
        {"webhookUrl": "https://hooks.example.com/x", "webhookSecret": "whsec_plain_text_secret_123456"},
        {},
        "webhookSecret",
        "plain text",
    ),
    ("dev", {"webhookAllowPrivateTargets": "sometimes"}, {}, "webhookAllowPrivateTargets", "use true or false"),
    ("dev", {"webhookMaxAttempts": "0"}, {}, "webhookMaxAttempts", "at least 1"),
    ("prod", {"apiReplicas": "0"}, {}, "apiReplicas", "between 1 and 8"),
    ("prod", {"apiReplicas": "9"}, {}, "apiReplicas", "between 1 and 8"),
    ("dev", {"apiReplicas": "two"}, {}, "apiReplicas", "not a whole number"),
    ("dev", {"networkMode": "host", "apiReplicas": "2"}, {}, "apiReplicas", "exactly 1 replica"),
    (
        "prod",
        {"dockerHosts": '["api-a.example.com"]'},
        {},
        "dockerHosts",
        "item 0 'api-a.example.com' is not a Docker host URL",
    ),
    ("prod", {"dockerHosts": '["ssh://deploy@api-a", "http://api-b:2375"]'}, {}, "dockerHosts", "item 1"),
    ("prod", {"dockerHosts": '["ssh://a", "ssh://a"]'}, {}, "dockerHosts", "lists a host twice"),
    ("prod", {"dockerHosts": '"ssh://a"'}, {}, "dockerHosts", "must be a list of Docker host URLs"),
    ("dev", {"dockerHosts": '["ssh://a", "ssh://b"]'}, {}, "dockerHosts", "needs valkeyMode aiven"),
    ("prod", {"dockerHosts": '["tcp://10.0.0.5:2376"]'}, {}, "dockerTlsCa", "missing required secret"),
    ("prod", {"proxyMemoryMb": "16"}, {}, "proxyMemoryMb", "at least 32 MB"),
    ("prod", {"proxyCpus": "0"}, {}, "proxyCpus", "positive number of CPUs"),
    ("prod", {"proxyContainerName": "edge proxy"}, {}, "proxyContainerName", "a Docker name"),
]


@pytest.mark.parametrize(
    "stack, overrides, secrets, key, words",
    CONFIG_ERRORS,
    ids=[f"{c[0]}-{c[3]}-{i}" for i, c in enumerate(CONFIG_ERRORS)],
)
@pulumi.runtime.test
async def test_bad_config_fails_naming_the_key_before_any_resource(stack, overrides, secrets, key, words) -> None:
    run = ProgramRun.for_stack(stack, overrides, secrets)
    with pytest.raises(StackConfigError) as raised:
        await run.run()
    assert raised.value.key == key
    message = str(raised.value)
    assert f"{PROJECT}:{key}" in message and words in message
    assert isinstance(raised.value, pulumi.RunError)  # printed by the CLI without a stack trace
    assert [r.type for r in run.monitor.registrations if r.type != "pulumi:pulumi:Stack"] == []


@pulumi.runtime.test
async def test_bad_secret_error_does_not_echo_the_value() -> None:
    run = ProgramRun.for_stack("dev", {"novitaApiKey": "plain-key-visible"}, {"novitaApiKey": None})
    with pytest.raises(StackConfigError) as raised:
        await run.run()
    assert "plain-key-visible" not in str(raised.value)


@pulumi.runtime.test
async def test_prod_may_open_aiven_to_everyone_only_when_forced() -> None:
    run = await ProgramRun.for_stack("prod", {"valkeyIpAllowList": '["0.0.0.0/0"]', "valkeyAllowAnyIp": "true"}).run()
    user_config = run.one("aiven:index/valkey:Valkey").inputs["valkeyUserConfig"]
    assert user_config["ipFilterStrings"] == ["0.0.0.0/0"]


@pytest.mark.parametrize(
    "overrides, secrets, leaked",
    [
        ({"webhookUrl": "https://hooks.example.com/x"}, {"webhookSecret": "tooshort-secret-9f"}, "tooshort-secret-9f"),
        ({"webhookUrl": "ftp://hooks.example.com/?token=tok-visible-77"}, {}, "tok-visible-77"),
    ],
)
@pulumi.runtime.test
async def test_webhook_errors_do_not_echo_the_secret_or_the_url(overrides, secrets, leaked) -> None:
    run = ProgramRun.for_stack("dev", overrides, secrets)
    with pytest.raises(StackConfigError) as raised:
        await run.run()
    assert leaked not in str(raised.value)


@pulumi.runtime.test
def test_each_key_is_read_by_exactly_one_settings_field() -> None:
    read: list[str] = []

    def walk(model) -> None:
        for field in model.model_fields.values():
            if isinstance(field.annotation, type) and issubclass(field.annotation, Concern):
                walk(field.annotation)
            else:
                read.append(field.alias)

    walk(StackSettings)
    assert sorted(read) == sorted(KEYS)
