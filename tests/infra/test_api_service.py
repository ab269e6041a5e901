"""The API container, per stack: every value the seed's incidents taught, read from the real stack files."""

from __future__ import annotations

import re
from typing import Any

import pulumi
import pytest

from tests.infra.harness import MOCK_VALKEY_PASSWORD, TEST_SECRETS, ProgramRun, Registration

CONTAINER = "docker:index/container:Container"
SECRET_ENVS = ("REDIS_URL", "NOVITA_API_KEY", "API_KEYS", "API_KEY_HASH_SECRET", "WEBHOOK_URL", "WEBHOOK_SECRET")

# What each stack must deploy (issue 2 and the seed document), in the form the provider reads back.
EXPECTED: dict[str, dict[str, Any]] = {
    "dev": {
        "name": "novita-gpu-instance-api-dev",
        "restart": "unless-stopped",
        "healthcheck": {
            "tests": ["CMD", "python", "-m", "app.healthcheck"],
            "interval": "30s",
            "timeout": "10s",
            "retries": 5,
            "startPeriod": "1m0s",
        },
        "memory": 512,
        "memorySwap": 512,
        "cpus": "1.0",
        "APP_ENV": "development",
        "REDIS_URL": "redis://valkey:6379/0",
    },
    "prod": {
        "name": "novita-gpu-instance-api",
        "restart": "always",
        "healthcheck": {
            "tests": ["CMD", "python", "-m", "app.healthcheck"],
            "interval": "30s",
            "timeout": "10s",
            "retries": 5,
            "startPeriod": "2m0s",
        },
        "memory": 512,
        "memorySwap": 512,
        "cpus": "0.5",
        "APP_ENV": "production",
        "REDIS_URL": f"rediss://default:{MOCK_VALKEY_PASSWORD}@novita-gpu-api-valkey-novita-gpu-api.aivencloud.com:13345",
    },
}


def api_container(run: ProgramRun) -> Registration:
    """The first API replica (on the host network: the one fixed-name container)."""
    replicas = [r for r in run.all(CONTAINER) if run.by_urn(r.parent).type == "novita-gpu-api:index:ApiService"]
    return min(replicas, key=lambda r: r.name)


def env_map(container: Registration) -> dict[str, str]:
    return dict(entry.split("=", 1) for entry in container.inputs["envs"])


def env_index(container: Registration, name: str) -> int:
    return next(i for i, entry in enumerate(container.inputs["envs"]) if entry.startswith(f"{name}="))


@pytest.mark.parametrize("stack", ["dev", "prod"])
@pulumi.runtime.test
async def test_restart_policy(stack: str) -> None:
    run = await ProgramRun.for_stack(stack).run()
    assert api_container(run).inputs["restart"] == EXPECTED[stack]["restart"]
    assert run.outputs["restartPolicy"].value == EXPECTED[stack]["restart"]


@pytest.mark.parametrize("stack", ["dev", "prod"])
@pulumi.runtime.test
async def test_healthcheck_every_field_in_canonical_form(stack: str) -> None:
    run = await ProgramRun.for_stack(stack).run()
    assert api_container(run).inputs["healthcheck"] == EXPECTED[stack]["healthcheck"]  # no startInterval by default
    hc = EXPECTED[stack]["healthcheck"]
    assert run.outputs["healthcheck"].value == (
        f"interval={hc['interval']} timeout={hc['timeout']} retries={hc['retries']} "
        f"start_period={hc['startPeriod']} start_interval=off"
    )


@pytest.mark.parametrize("stack", ["dev", "prod"])
@pulumi.runtime.test
async def test_limits_and_no_swap(stack: str) -> None:
    inputs = api_container(await ProgramRun.for_stack(stack).run()).inputs
    expected = EXPECTED[stack]
    assert (inputs["memory"], inputs["memorySwap"], inputs["cpus"]) == (
        expected["memory"],
        expected["memorySwap"],
        expected["cpus"],
    )


@pytest.mark.parametrize("stack", ["dev", "prod"])
@pulumi.runtime.test
async def test_replicas_publish_nothing_and_are_auto_named(stack: str) -> None:
    run = await ProgramRun.for_stack(stack).run()
    container = api_container(run)
    assert "ports" not in container.inputs and "name" not in container.inputs
    assert container.name == f"{EXPECTED[stack]['name']}-1"
    names = run.outputs["containerNames"].value
    assert len(names) == {"dev": 1, "prod": 2}[stack] and len(set(names)) == len(names)
    for index, name in enumerate(names, start=1):
        assert re.fullmatch(rf"{EXPECTED[stack]['name']}-{index}-[0-9a-f]{{7}}", name), name
    assert run.outputs["apiUrl"].value == "http://127.0.0.1:3003"
    assert run.outputs["healthUrl"].value == "http://127.0.0.1:3003/health"


@pytest.mark.parametrize("stack", ["dev", "prod"])
@pulumi.runtime.test
async def test_environment_follows_the_container_contract(stack: str) -> None:
    container = api_container(await ProgramRun.for_stack(stack).run())
    assert env_map(container) == {
        "APP_ENV": EXPECTED[stack]["APP_ENV"],
        "HOST": "0.0.0.0",
        "PORT": "3003",
        "LOG_LEVEL": "INFO",
        "NOVITA_BASE_URL": "https://api.novita.ai/gpu-instance/openapi/v1",
        "FAULT_INJECTION": "false",
        "HEALTHCHECK_TIMEOUT_SECONDS": "5.0",
        "HEALTHCHECK_KILL_AFTER": "5",
        "SHUTDOWN_DRAIN_SECONDS": "3",
        "REDIS_URL": EXPECTED[stack]["REDIS_URL"],
        "NOVITA_API_KEY": TEST_SECRETS["novitaApiKey"],
        "API_KEYS": TEST_SECRETS["apiKeys"],
        "API_KEY_HASH_SECRET": TEST_SECRETS["apiKeyHashSecret"],
        # The defaults of the pass-through settings, stated so the container shows what it runs with.
        "MAX_REQUEST_BODY_BYTES": "1048576",
        "RATE_LIMIT_REQUESTS": "600",
        "RATE_LIMIT_WINDOW_SECONDS": "60",
        "JOB_CONCURRENCY": "8",
        "JOB_MAX_ATTEMPTS": "5",
        "JOB_VISIBILITY_TIMEOUT_SECONDS": "20",
        "SHUTDOWN_GRACE_SECONDS": "10",
        "READINESS_ENABLED": "true",
        "READINESS_MAX_WAIT_SECONDS": "600",
        "INSTANCE_PROVISIONING_TIMEOUT_SECONDS": "1800",
        "AUTO_STOP_ENABLED": "true",
        "AUTO_STOP_IDLE_SECONDS": "1800",
        "AUTO_STOP_STARTUP_GRACE_SECONDS": "2700",
        "AUTO_STOP_DRY_RUN": "false",
        "MAX_INSTANCE_LIFETIME_SECONDS": "0",
        "BUDGET_AUTO_STOP": "false",
        "BUDGET_AUTO_STOP_DRY_RUN": "false",
        "SPOT_RECOVERY_ENABLED": "false",
        "SPOT_RECOVERY_MIN_INTERVAL_SECONDS": "14400",
        "WEBHOOK_ALLOW_PRIVATE_TARGETS": "false",
        "WEBHOOK_MAX_ATTEMPTS": "8",
    }


@pytest.mark.parametrize("stack", ["dev", "prod"])
@pulumi.runtime.test
async def test_secret_envs_stay_secret_and_plain_ones_stay_plain(stack: str) -> None:
    container = api_container(await ProgramRun.for_stack(stack).run())
    for name in env_map(container):
        assert container.is_secret(f"envs[{env_index(container, name)}]") == (name in SECRET_ENVS), name


@pytest.mark.parametrize("stack", ["dev", "prod"])
@pulumi.runtime.test
async def test_secrets_appear_in_no_output_except_the_secret_valkey_url(stack: str) -> None:
    run = await ProgramRun.for_stack(stack).run()
    assert run.outputs["valkeyUrl"].secret is True
    assert run.outputs["valkeyUrl"].value == EXPECTED[stack]["REDIS_URL"]
    secret_values = [*TEST_SECRETS.values(), MOCK_VALKEY_PASSWORD]
    for name, output in run.outputs.items():
        if name != "valkeyUrl":
            assert output.secret is False, name
            assert not any(value in str(output.value) for value in secret_values), name


@pytest.mark.parametrize("stack", ["dev", "prod"])
@pulumi.runtime.test
async def test_lifecycle_logs_and_wait(stack: str) -> None:
    inputs = api_container(await ProgramRun.for_stack(stack).run()).inputs
    assert inputs["init"] is True
    assert (inputs["stopSignal"], inputs["stopTimeout"], inputs["destroyGraceSeconds"]) == ("SIGTERM", 30, 30)
    assert inputs["logDriver"] == "json-file"
    assert inputs["logOpts"] == {"max-size": "10m", "max-file": "3"}
    assert inputs["wait"] is True and inputs["mustRun"] is True
    start_period = {"dev": 60, "prod": 120}[stack]
    assert inputs["waitTimeout"] > start_period + 30 * 5
    assert inputs["waitTimeout"] == start_period + 30 * 6


@pytest.mark.parametrize("stack", ["dev", "prod"])
@pulumi.runtime.test
async def test_hardening_is_on(stack: str) -> None:
    inputs = api_container(await ProgramRun.for_stack(stack).run()).inputs
    assert inputs["readOnly"] is True
    assert inputs["tmpfs"] == {"/tmp": "rw,noexec,nosuid,nodev,size=64m"}
    assert inputs["securityOpts"] == ["no-new-privileges:true"]
    assert inputs["capabilities"] == {"drops": ["ALL"]}
    assert inputs["user"] == "10001:10001"
    assert inputs["ulimits"] == [{"name": "nproc", "soft": 256, "hard": 256}]


@pulumi.runtime.test
async def test_hardening_can_be_turned_off() -> None:
    inputs = api_container(await ProgramRun.for_stack("dev", {"containerHardening": "false"}).run()).inputs
    assert not {"readOnly", "tmpfs", "securityOpts", "capabilities", "user", "ulimits"} & set(inputs)


@pytest.mark.parametrize("stack", ["dev", "prod"])
@pulumi.runtime.test
async def test_replicas_are_replaced_create_before_delete_on_healthcheck_or_init_change(stack: str) -> None:
    run = await ProgramRun.for_stack(stack).run()
    container = api_container(run)
    assert container.replace_on_changes == ["healthcheck", "init"]
    assert container.delete_before_replace is False  # the new replica is healthy before the old one goes
    assert container.protect is False
    assert run.by_urn(container.parent).type == "novita-gpu-api:index:ApiService"


@pulumi.runtime.test
async def test_the_host_network_container_keeps_its_fixed_name_and_goes_delete_first() -> None:
    run = await ProgramRun.for_stack("dev", {"networkMode": "host"}).run()
    (container,) = [r for r in run.all(CONTAINER) if run.by_urn(r.parent).type == "novita-gpu-api:index:ApiService"]
    assert (container.name, container.inputs["name"]) == ("api-container", "novita-gpu-instance-api-dev")
    assert container.delete_before_replace is True  # it listens on the host's port itself
    assert run.outputs["containerNames"].value == ["novita-gpu-instance-api-dev"]


@pytest.mark.parametrize("stack", ["dev", "prod"])
@pulumi.runtime.test
async def test_runs_the_built_image_by_id_so_a_rebuild_rolls_out(stack: str) -> None:
    run = await ProgramRun.for_stack(stack).run()
    image_id = run.outputs["imageId"].value
    assert image_id.startswith("sha256:")
    assert api_container(run).inputs["image"] == image_id


@pulumi.runtime.test
async def test_custom_values_are_normalised() -> None:
    run = await ProgramRun.for_stack(
        "dev",
        {
            "healthcheckStartPeriod": "90s",
            "healthcheckInterval": "1m",
            "healthcheckStartInterval": "5000ms",
            "cpus": "2",
        },
    ).run()
    inputs = api_container(run).inputs
    assert inputs["healthcheck"]["startPeriod"] == "1m30s"
    assert inputs["healthcheck"]["interval"] == "1m0s"
    assert inputs["healthcheck"]["startInterval"] == "5s"
    assert inputs["cpus"] == "2.0"


@pulumi.runtime.test
async def test_host_network_publishes_nothing_and_listens_where_configured() -> None:
    run = await ProgramRun.for_stack("dev", {"networkMode": "host", "apiPort": "18080"}).run()
    inputs = api_container(run).inputs
    assert inputs["networkMode"] == "host"
    assert "ports" not in inputs and "networksAdvanced" not in inputs
    assert (env_map(api_container(run))["HOST"], env_map(api_container(run))["PORT"]) == ("127.0.0.1", "18080")
    assert env_map(api_container(run))["SHUTDOWN_DRAIN_SECONDS"] == "0"  # no proxy to drain from
    assert run.all("docker:index/network:Network") == []
    assert run.outputs["apiUrl"].value == "http://127.0.0.1:18080"


@pulumi.runtime.test
async def test_bridge_mode_joins_the_private_network() -> None:
    run = await ProgramRun.for_stack("dev").run()
    network = run.one("docker:index/network:Network")
    assert network.inputs == {"name": "novita-gpu-api-dev"}
    assert api_container(run).inputs["networksAdvanced"] == [
        {"name": "novita-gpu-api-dev", "aliases": ["api-replicas"]}
    ]


@pulumi.runtime.test
async def test_dev_without_client_keys_and_with_fault_injection() -> None:
    run = await ProgramRun.for_stack("dev", {"faultInjection": "true", "logLevel": "DEBUG"}, {"apiKeys": None}).run()
    env = env_map(api_container(run))
    assert "API_KEYS" not in env and "API_KEY_HASH_SECRET" in env  # the harness sets it in every stack
    assert (env["FAULT_INJECTION"], env["LOG_LEVEL"]) == ("true", "DEBUG")


@pulumi.runtime.test
async def test_probe_timeout_and_kill_threshold_follow_the_healthcheck() -> None:
    run = await ProgramRun.for_stack(
        "dev", {"healthcheckTimeout": "1s", "healthcheckInterval": "5s", "healthcheckRetries": "3"}
    ).run()
    env = env_map(api_container(run))
    # Half of a 1 s Docker timeout: the probe must give up first, or Docker kills it and no failure is counted.
    assert (env["HEALTHCHECK_TIMEOUT_SECONDS"], env["HEALTHCHECK_KILL_AFTER"]) == ("0.5", "3")
