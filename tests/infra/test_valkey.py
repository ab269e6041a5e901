"""The Valkey component: Aiven for Valkey in prod, a local container in dev, the same outputs in both."""

from __future__ import annotations

from urllib.parse import quote

import pulumi
import pytest

from components.valkey import APP_COMMANDS, api_url, app_user_url, require_tls
from tests.infra.harness import MOCK_VALKEY_PASSWORD, MOCK_VALKEY_USER_PASSWORD, TEST_SECRETS, ProgramRun

AIVEN_VALKEY = "aiven:index/valkey:Valkey"
VALKEY_USER = "aiven:index/valkeyUser:ValkeyUser"
CONTAINER = "docker:index/container:Container"
AIVEN_HOST = "novita-gpu-api-valkey-novita-gpu-api.aivencloud.com"


@pulumi.runtime.test
async def test_prod_is_aiven_with_tls_rdb_noeviction_and_an_allow_list() -> None:
    run = await ProgramRun.for_stack("prod").run()
    service = run.one(AIVEN_VALKEY)
    assert service.inputs == {
        "project": "novita-gpu-api",
        "cloudName": "google-europe-west1",
        "plan": "startup-4",
        "serviceName": "novita-gpu-api-valkey",
        "maintenanceWindowDow": "sunday",
        "maintenanceWindowTime": "03:00:00",
        "terminationProtection": True,
        "valkeyUserConfig": {
            "valkeySsl": True,
            "valkeyPersistence": "rdb",
            "valkeyMaxmemoryPolicy": "noeviction",
            "ipFilterStrings": ["203.0.113.10/32"],
        },
    }
    assert sorted(r.name for r in run.all(CONTAINER)) == [
        "novita-gpu-instance-api-1",
        "novita-gpu-instance-api-2",
        "proxy-container",
    ]  # no local Valkey in prod


@pulumi.runtime.test
async def test_prod_valkey_is_protected_and_uses_its_own_provider_with_the_secret_token() -> None:
    run = await ProgramRun.for_stack("prod").run()
    service = run.one(AIVEN_VALKEY)
    provider = run.one("pulumi:providers:aiven")
    assert service.protect is True
    assert service.provider.startswith(provider.urn + "::")
    assert provider.inputs["apiToken"] == TEST_SECRETS["aivenToken"] and provider.is_secret("apiToken")
    assert run.by_urn(service.parent).type == run.by_urn(provider.parent).type == "novita-gpu-api:index:Valkey"


@pulumi.runtime.test
async def test_aiven_outside_production_is_not_protected() -> None:
    run = await ProgramRun.for_stack(
        "dev", {"valkeyMode": "aiven", "aivenProject": "sandbox", "valkeyIpAllowList": '["198.51.100.0/24"]'}
    ).run()
    service = run.one(AIVEN_VALKEY)
    assert service.protect is False and service.inputs["terminationProtection"] is False
    assert service.inputs["valkeyUserConfig"]["ipFilterStrings"] == ["198.51.100.0/24"]


@pulumi.runtime.test
async def test_prod_outputs_host_port_tls_and_a_secret_rediss_url() -> None:
    run = await ProgramRun.for_stack("prod").run()
    assert (run.outputs["valkeyHost"].value, run.outputs["valkeyPort"].value, run.outputs["valkeyTls"].value) == (
        AIVEN_HOST,
        13345,
        True,
    )
    url = run.outputs["valkeyUrl"]
    assert url.secret and url.value == f"rediss://default:{MOCK_VALKEY_PASSWORD}@{AIVEN_HOST}:13345"


@pulumi.runtime.test
def test_aiven_schemes_are_rewritten_for_redis_py() -> None:
    assert api_url("valkeys://default:pw@h:1") == "rediss://default:pw@h:1"
    assert api_url("valkey://h:1") == "redis://h:1"
    assert api_url("rediss://default:pw@h:1") == "rediss://default:pw@h:1"


@pulumi.runtime.test
async def test_dev_is_a_local_valkey_container_on_the_private_network() -> None:
    run = await ProgramRun.for_stack("dev").run()
    assert run.all(AIVEN_VALKEY) == [] and run.all("pulumi:providers:aiven") == []
    image = run.one("docker:index/remoteImage:RemoteImage", "valkey-image")
    volume = run.one("docker:index/volume:Volume")
    valkey = run.one(CONTAINER, "valkey-container")
    assert image.inputs == {"name": "valkey/valkey:8-alpine", "keepLocally": True}
    assert volume.inputs == {"name": "novita-gpu-api-valkey-dev-data"}
    inputs = valkey.inputs
    assert inputs["name"] == "novita-gpu-api-valkey-dev"
    assert inputs["image"].startswith("sha256:")  # the pulled image's ID
    assert inputs["command"] == [
        "valkey-server",
        "--port",
        "6379",
        "--bind",
        "0.0.0.0",
        "--protected-mode",
        "no",
        "--dir",
        "/data",
        "--appendonly",
        "yes",
        "--maxmemory-policy",
        "noeviction",
    ]
    assert inputs["networksAdvanced"] == [{"name": "novita-gpu-api-dev", "aliases": ["valkey"]}]
    assert "ports" not in inputs  # reachable from the private network only
    assert inputs["volumes"] == [{"volumeName": "novita-gpu-api-valkey-dev-data", "containerPath": "/data"}]
    assert inputs["healthcheck"] == {
        "tests": ["CMD", "valkey-cli", "-p", "6379", "ping"],
        "interval": "5s",
        "timeout": "3s",
        "retries": 5,
        "startPeriod": "10s",
    }
    assert (inputs["wait"], inputs["waitTimeout"], inputs["restart"]) == (True, 60, "unless-stopped")
    assert (inputs["readOnly"], inputs["securityOpts"]) == (True, ["no-new-privileges:true"])
    assert inputs["labels"] == [
        {"label": "novita-gpu-api.role", "value": "valkey"},
        {"label": "novita-gpu-api.stack", "value": "dev"},
    ]
    assert valkey.delete_before_replace and valkey.replace_on_changes == ["healthcheck"]
    for child in (image, volume, valkey):
        assert run.by_urn(child.parent).type == "novita-gpu-api:index:Valkey"


@pulumi.runtime.test
async def test_dev_outputs_host_port_tls_and_a_secret_redis_url() -> None:
    run = await ProgramRun.for_stack("dev").run()
    assert (run.outputs["valkeyHost"].value, run.outputs["valkeyPort"].value, run.outputs["valkeyTls"].value) == (
        "valkey",
        6379,
        False,
    )
    assert run.outputs["valkeyUrl"].secret and run.outputs["valkeyUrl"].value == "redis://valkey:6379/0"


@pulumi.runtime.test
async def test_local_valkey_for_tests_host_network_local_image_and_redis_binaries() -> None:
    run = await ProgramRun.for_stack(
        "dev",
        {
            "networkMode": "host",
            "valkeyPort": "16379",
            "valkeyImage": "novita-test-valkey:local",
            "valkeyPullImage": "false",
            "valkeyServerBinary": "redis-server",
            "valkeyCliBinary": "redis-cli",
        },
    ).run()
    assert [
        r.name for r in run.all("docker:index/remoteImage:RemoteImage")
    ] == []  # no proxy on the host network either
    inputs = run.one(CONTAINER, "valkey-container").inputs
    assert inputs["image"] == "novita-test-valkey:local"
    assert inputs["networkMode"] == "host" and "networksAdvanced" not in inputs
    assert inputs["command"][:5] == ["redis-server", "--port", "16379", "--bind", "127.0.0.1"]
    assert inputs["healthcheck"]["tests"] == ["CMD", "redis-cli", "-p", "16379", "ping"]
    assert run.outputs["valkeyUrl"].value == "redis://127.0.0.1:16379/0"


@pytest.mark.parametrize("stack", ["dev", "prod"])
@pulumi.runtime.test
async def test_the_api_gets_the_component_url(stack: str) -> None:
    run = await ProgramRun.for_stack(stack).run()
    envs = run.one(
        CONTAINER, "novita-gpu-instance-api-1" if stack == "prod" else "novita-gpu-instance-api-dev-1"
    ).inputs["envs"]
    assert f"REDIS_URL={run.outputs['valkeyUrl'].value}" in envs


@pulumi.runtime.test
async def test_the_optional_app_user_is_limited_to_the_api_keys_and_commands() -> None:
    run = await ProgramRun.for_stack("prod", {"valkeyAppUser": "ngpu-api"}).run()
    user = run.one(VALKEY_USER)
    assert user.inputs == {
        "project": "novita-gpu-api",
        "serviceName": "novita-gpu-api-valkey",
        "username": "ngpu-api",
        "valkeyAclCategories": ["-@all"],
        "valkeyAclCommands": [f"+{command}" for command in APP_COMMANDS],
        "valkeyAclKeys": ["ngpu:*"],
    }  # no password input: Aiven generates it
    assert not any(c in APP_COMMANDS for c in ("keys", "flushall", "flushdb", "config", "acl", "debug", "shutdown"))
    provider = run.one("pulumi:providers:aiven")
    assert user.provider.startswith(provider.urn + "::")
    assert run.by_urn(user.parent).type == "novita-gpu-api:index:Valkey"


@pulumi.runtime.test
async def test_the_app_user_password_reaches_the_api_only_as_a_secret_tls_url() -> None:
    run = await ProgramRun.for_stack("prod", {"valkeyAppUser": "ngpu-api"}).run()
    expected = f"rediss://ngpu-api:{quote(MOCK_VALKEY_USER_PASSWORD, safe='')}@{AIVEN_HOST}:13345"
    assert run.outputs["valkeyUrl"].secret and run.outputs["valkeyUrl"].value == expected
    container = run.one(CONTAINER, "novita-gpu-instance-api-1")
    envs = container.inputs["envs"]
    index = envs.index(f"REDIS_URL={expected}")
    assert container.is_secret(f"envs[{index}]")
    assert not any(MOCK_VALKEY_PASSWORD in env for env in envs)  # the admin password is not used
    for name, output in run.outputs.items():
        if name != "valkeyUrl":
            assert MOCK_VALKEY_USER_PASSWORD not in str(output.value), name


@pulumi.runtime.test
async def test_without_the_app_user_no_user_is_created() -> None:
    run = await ProgramRun.for_stack("prod").run()
    assert run.all(VALKEY_USER) == []


@pulumi.runtime.test
def test_aiven_urls_must_be_tls() -> None:
    assert require_tls("rediss://default:pw@h:1") == "rediss://default:pw@h:1"
    for clear in ("redis://default:pw@h:1", api_url("valkey://default:pw@h:1")):
        with pytest.raises(ValueError, match="not a TLS"):
            require_tls(clear)
    assert app_user_url("h", 1, "u", "p@ss/w:rd") == "rediss://u:p%40ss%2Fw%3Ard@h:1"
