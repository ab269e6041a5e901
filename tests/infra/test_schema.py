"""Every registered resource's inputs match the provider schemas (tests/infra/schema.py), kept in the repository."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pulumi
import pytest

from scripts.extract_provider_schemas import RESOURCES, extract
from tests.infra.conftest import SCHEMAS_DIR_ENV
from tests.infra.harness import REPO_ROOT, ProgramRun, Registration
from tests.infra.schema import ProviderSchemas

VARIANTS = {
    "dev": ("dev", {}, {}),
    "prod": ("prod", {}, {}),
    "dev-host-network": (
        "dev",
        {"networkMode": "host", "valkeyPullImage": "false", "healthcheckStartInterval": "2s"},
        {},
    ),
    "dev-aiven": (
        "dev",
        {"valkeyMode": "aiven", "aivenProject": "sandbox", "valkeyIpAllowList": '["198.51.100.0/24"]'},
        {},
    ),
    "prod-push": (
        "prod",
        {
            "imagePush": "true",
            "registryServer": "registry.example.com",
            "registryUsername": "deploy",
            "imageName": "registry.example.com/api:1",
        },
        {"registryPassword": "test-registry-pass"},
    ),
    "dev-unhardened": ("dev", {"containerHardening": "false"}, {}),
    "prod-valkey-app-user": ("prod", {"valkeyAppUser": "ngpu-api"}, {}),
    "prod-rollback": ("prod", {"apiImage": "novita-gpu-api:prod-3f9a1c2b7d10"}, {}),
    "dev-domain": ("dev", {"domain": "api.example.com"}, {}),
    "prod-domain": ("prod", {"domain": "api.example.com", "acmeEmail": "ops@example.com", "httpsPort": "8443"}, {}),
    "prod-two-ssh-hosts": (
        "prod",
        {"dockerHosts": '["ssh://deploy@api-a", "ssh://deploy@api-b:2222"]', "apiReplicas": "3"},
        {},
    ),
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
    assert schemas.problems(_registration(container, {"image": "x", "nanoCpus": 5})) == [
        f"{container} probe.nanoCpus: unknown property"
    ]
    assert schemas.problems(_registration(container, {"image": "x", "cpus": 0.5})) == [
        f"{container} probe.cpus: expected string, got float 0.5"
    ]
    assert schemas.problems(_registration(container, {"image": "x", "memory": "512"})) == [
        f"{container} probe.memory: expected integer, got str '512'"
    ]
    assert schemas.problems(_registration(container, {"image": "x", "healthcheck": {"retries": "5"}})) == [
        f"{container} probe.healthcheck.retries: expected integer, got str '5'"
    ]
    assert schemas.problems(_registration(container, {"image": "x", "labels": [{"label": "a"}]})) == [
        f"{container} probe.labels[0].value: required input missing"
    ]
    assert schemas.problems(_registration(container, {"memory": 512})) == [
        f"{container} probe.image: required input missing"
    ]
    image = "docker:index/image:Image"
    assert schemas.problems(_registration(image, {"imageName": "a", "build": {"builderVersion": "V3"}})) == [
        f"{image} probe.build.builderVersion: 'V3' is not one of the schema's enum values"
    ]
    assert schemas.problems(_registration("docker:index/nothing:Nothing", {})) == [
        "docker:index/nothing:Nothing probe: no schema for this resource type"
    ]


@pulumi.runtime.test
def test_the_extracts_say_which_provider_and_version_they_were_cut_from(schemas_dir: Path) -> None:
    requirements = (REPO_ROOT / "requirements.txt").read_text()
    for filename, package in (("docker.schema.json", "pulumi-docker"), ("aiven.schema.json", "pulumi-aiven")):
        document = json.loads((schemas_dir / filename).read_text())
        source = document["extract"]["source"]
        assert source.startswith(f"{package} ") and " at commit " in source, filename
        pin = re.search(rf"^{package}==(\S+)$", requirements, re.MULTILINE)
        assert pin, f"requirements.txt pins no {package}"
        pinned = pin.group(1)
        assert f"{package.removeprefix('pulumi-')}@{pinned}" in source, (
            f"{filename} does not name the pinned {package} {pinned}"
        )


@pulumi.runtime.test
def test_the_extract_keeps_every_type_its_resources_reference(schemas_dir: Path) -> None:
    # Re-extracting an extract must give it back: a dangling $ref would raise, a lost input would show as a diff.
    for provider in RESOURCES:
        document = json.loads((schemas_dir / f"{provider}.schema.json").read_text())
        again = extract(document, RESOURCES[provider], document["extract"]["source"])
        assert (again["provider"], again["resources"], again["types"]) == (
            document["provider"],
            document["resources"],
            document["types"],
        )


@pulumi.runtime.test
def test_extracting_drops_descriptions_and_follows_refs_transitively() -> None:
    full = {
        "name": "demo",
        "provider": {"inputProperties": {"host": {"type": "string", "description": "daemon"}}},
        "resources": {
            "demo:index/a:A": {
                "description": "an A",
                "inputProperties": {"b": {"$ref": "#/types/demo:index/B:B", "description": "a B"}},
                "requiredInputs": ["b"],
                "properties": {"out": {"type": "string"}},
            },
            "demo:index/unused:Unused": {"inputProperties": {"x": {"$ref": "#/types/demo:index/X:X"}}},
        },
        "types": {
            "demo:index/B:B": {
                "type": "object",
                "properties": {"c": {"type": "array", "items": {"$ref": "#/types/demo:index/C:C"}}},
            },
            "demo:index/C:C": {"type": "string", "enum": [{"value": "V1", "description": "one"}]},
            "demo:index/X:X": {"type": "object"},
        },
    }
    document = extract(full, ("demo:index/a:A",), "demo at commit 0")
    assert document["provider"] == {"inputProperties": {"host": {"type": "string"}}, "requiredInputs": []}
    assert document["resources"] == {
        "demo:index/a:A": {"inputProperties": {"b": {"$ref": "#/types/demo:index/B:B"}}, "requiredInputs": ["b"]}
    }
    assert document["types"] == {
        "demo:index/B:B": {
            "type": "object",
            "properties": {"c": {"type": "array", "items": {"$ref": "#/types/demo:index/C:C"}}},
        },
        "demo:index/C:C": {"type": "string", "enum": [{"value": "V1"}]},
    }
    with pytest.raises(KeyError, match="demo:index/missing:Missing"):
        extract(full, ("demo:index/missing:Missing",), "demo at commit 0")


@pulumi.runtime.test
def test_a_copy_of_the_repository_with_nothing_beside_it_passes_the_schema_check(tmp_path: Path) -> None:
    """What a fresh clone sees: the tracked files only, in an empty folder (no ../shared), no PULUMI_SCHEMAS_DIR."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, check=True).stdout
    copy = tmp_path / "clone"
    for relative in filter(None, listed.decode().split("\0")):
        source = REPO_ROOT / relative
        if source.is_file():  # a file deleted but not yet committed is still listed
            (copy / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy / relative)
    for relative in ("tests/infra/schemas/docker.schema.json", "tests/infra/schemas/aiven.schema.json"):
        assert (copy / relative).is_file(), f"{relative} is not tracked by git"
    assert not (tmp_path / "shared").exists()
    env = {name: value for name, value in os.environ.items() if name != SCHEMAS_DIR_ENV}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/infra/test_schema.py",
            "-k",
            "test_inputs_match_the_provider_schemas or catches",
        ],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert f"{len(VARIANTS) + 1} passed" in result.stdout
