"""Every registered resource's inputs match the provider schemas (tests/infra/schema.py)."""
from __future__ import annotations

from pathlib import Path

import pulumi
import pytest

from tests.infra.harness import ProgramRun, Registration
from tests.infra.schema import ProviderSchemas

VARIANTS = {
    "dev": ("dev", {}, {}),
    "prod": ("prod", {}, {}),
    "dev-host-network": ("dev", {"networkMode": "host", "valkeyPullImage": "false", "healthcheckStartInterval": "2s"}, {}),
    "dev-aiven": ("dev", {"valkeyMode": "aiven", "aivenProject": "sandbox", "valkeyIpAllowList": '["198.51.100.0/24"]'}, {}),
    "prod-push": (
        "prod",
        {"imagePush": "true", "registryServer": "registry.example.com", "registryUsername": "deploy", "imageName": "registry.example.com/api:1"},
        {"registryPassword": "test-registry-pass"},
    ),
    "dev-unhardened": ("dev", {"containerHardening": "false"}, {}),
    "prod-valkey-app-user": ("prod", {"valkeyAppUser": "ngpu-api"}, {}),
    "prod-two-ssh-hosts": ("prod", {"dockerHosts": '["ssh://deploy@api-a", "ssh://deploy@api-b:2222"]', "apiReplicas": "3"}, {}),
    "prod-tcp-host": (
        "prod",
        {"dockerHosts": '["tcp://10.0.0.5:2376"]', "proxyPullImage": "false"},
        {"dockerTlsCa": "ca", "dockerTlsCert": "cert", "dockerTlsKey": "key"},
    ),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pulumi.runtime.test
async def test_inputs_match_the_provider_schemas(variant: str, schemas_dir: Path) -> None:
    stack, overrides, secrets = VARIANTS[variant]
    run = await ProgramRun.for_stack(stack, overrides, secrets).run()
    schemas = ProviderSchemas(schemas_dir)
    custom = [r for r in run.monitor.registrations if r.custom]
    assert custom, "nothing registered"
    problems = [p for r in custom for p in schemas.problems(r)]
    assert problems == []


def _registration(type_: str, inputs: dict) -> Registration:
    return Registration(type_, "probe", "urn", True, "", inputs, set(), False, False, [], [], "", [])


@pulumi.runtime.test
def test_the_check_catches_unknown_properties_wrong_types_and_missing_inputs(schemas_dir: Path) -> None:
    schemas = ProviderSchemas(schemas_dir)
    container = "docker:index/container:Container"
    assert schemas.problems(_registration(container, {"image": "x", "memory": 512, "cpus": "0.5"})) == []
    assert schemas.problems(_registration(container, {"image": "x", "nanoCpus": 5})) == [f"{container} probe.nanoCpus: unknown property"]
    assert schemas.problems(_registration(container, {"image": "x", "cpus": 0.5})) == [f"{container} probe.cpus: expected string, got float 0.5"]
    assert schemas.problems(_registration(container, {"image": "x", "memory": "512"})) == [f"{container} probe.memory: expected integer, got str '512'"]
    assert schemas.problems(_registration(container, {"image": "x", "healthcheck": {"retries": "5"}})) == [
        f"{container} probe.healthcheck.retries: expected integer, got str '5'"
    ]
    assert schemas.problems(_registration(container, {"image": "x", "labels": [{"label": "a"}]})) == [
        f"{container} probe.labels[0].value: required input missing"
    ]
    assert schemas.problems(_registration(container, {"memory": 512})) == [f"{container} probe.image: required input missing"]
    image = "docker:index/image:Image"
    assert schemas.problems(_registration(image, {"imageName": "a", "build": {"builderVersion": "V3"}})) == [
        f"{image} probe.build.builderVersion: 'V3' is not one of the schema's enum values"
    ]
    assert schemas.problems(_registration("docker:index/nothing:Nothing", {})) == ["docker:index/nothing:Nothing probe: no schema for this resource type"]
