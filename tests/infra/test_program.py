"""The program as a whole: components, parenting, and the stack outputs."""

from __future__ import annotations

import pulumi
import pytest

from tests.infra.harness import ProgramRun

COMPONENTS = {
    "novita-gpu-api:index:Valkey",
    "novita-gpu-api:index:ApiImage",
    "novita-gpu-api:index:ApiService",
    "novita-gpu-api:index:EdgeProxy",
}
STACK_OUTPUTS = {
    "apiUrl",
    "healthUrl",
    "httpsUrl",
    "containerNames",
    "proxyContainerNames",
    "apiReplicas",
    "dockerHosts",
    "imageId",
    "imageName",
    "restartPolicy",
    "healthcheck",
    "valkeyHost",
    "valkeyPort",
    "valkeyTls",
    "valkeyUrl",
}


@pytest.mark.parametrize(
    "stack, config",
    [
        ("dev", {}),
        ("prod", {}),
        ("prod", {"domain": "api.example.com", "acmeEmail": "ops@example.com"}),
    ],
)
@pulumi.runtime.test
async def test_every_resource_is_a_component_child_except_the_network(stack: str, config: dict) -> None:
    run = await ProgramRun.for_stack(stack, config).run()
    registrations = [r for r in run.monitor.registrations if r.type != "pulumi:pulumi:Stack"]
    components = COMPONENTS | ({"novita-gpu-api:index:TlsFront"} if config else set())  # a domain adds the HTTPS front
    assert {r.type for r in registrations if not r.custom} == components
    for r in registrations:
        parent_type = run.by_urn(r.parent).type
        if r.custom and r.type != "docker:index/network:Network":
            assert parent_type in components, r.name
        else:
            assert parent_type == "pulumi:pulumi:Stack", r.name


@pytest.mark.parametrize("stack", ["dev", "prod"])
@pulumi.runtime.test
async def test_stack_outputs(stack: str) -> None:
    run = await ProgramRun.for_stack(stack).run()
    assert set(run.outputs) == STACK_OUTPUTS
    assert [name for name, output in run.outputs.items() if output.secret] == ["valkeyUrl"]
