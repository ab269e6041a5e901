"""Issue 11 under mocks: the edge proxy, the replica chain, one Docker provider per host, labels and secrets."""

from __future__ import annotations

import itertools
import shutil
import subprocess
from pathlib import Path

import pulumi
import pytest

from components.edge_proxy import HEALTH_PROBE, ProxyConfig, render_haproxy_config
from tests.infra.harness import TEST_SECRETS, ProgramRun, Registration

CONTAINER = "docker:index/container:Container"
PROVIDER = "pulumi:providers:docker"
TWO_SSH_HOSTS = '["ssh://deploy@api-a.example.com", "ssh://deploy@api-b.example.com:2222"]'
TLS_SECRETS = {
    "dockerTlsCa": "test-ca-pem-1c2d",
    "dockerTlsCert": "test-cert-pem-3e4f",
    "dockerTlsKey": "test-key-pem-5a6b",
}


def children_of(run: ProgramRun, component: str, type_: str = CONTAINER) -> list[Registration]:
    return [r for r in run.all(type_) if run.by_urn(r.parent).type == f"novita-gpu-api:index:{component}"]


def env_map(container: Registration) -> dict[str, str]:
    return dict(entry.split("=", 1) for entry in container.inputs["envs"])


@pytest.mark.parametrize("stack, replicas", [("dev", 1), ("prod", 2)])
@pulumi.runtime.test
async def test_the_proxy_runs_the_config_rendered_from_the_settings(stack: str, replicas: int) -> None:
    run = await ProgramRun.for_stack(stack).run()
    (proxy,) = children_of(run, "EdgeProxy")
    config = env_map(proxy)["HAPROXY_CONFIG"]
    assert config == render_haproxy_config(ProxyConfig.for_replicas(replicas, 3003, 30))
    assert f"server-template replica 1-{2 * replicas} api-replicas:3003" in config
    assert (
        proxy.inputs["command"][:2] == ["bash", "-c"]
        and "exec haproxy -W -db -f /tmp/haproxy.cfg" in proxy.inputs["command"][2]
    )


@pulumi.runtime.test
async def test_the_config_follows_replicas_and_stop_grace() -> None:
    run = await ProgramRun.for_stack("prod", {"apiReplicas": "3", "stopGraceSeconds": "45"}).run()
    (proxy,) = children_of(run, "EdgeProxy")
    config = env_map(proxy)["HAPROXY_CONFIG"]
    assert "server-template replica 1-6 api-replicas:3003" in config
    assert "hard-stop-after 45s" in config
    assert proxy.inputs["stopTimeout"] == 45


@pulumi.runtime.test
def test_the_rendered_config_routes_on_readiness_and_retries_only_what_is_safe() -> None:
    config = render_haproxy_config(ProxyConfig.for_replicas(2, 3003, 30))
    lines = [line.strip() for line in config.splitlines()]
    assert "nameserver docker 127.0.0.11:53" in lines  # Docker's DNS: the replicas' shared alias
    assert "option httpchk GET /readyz" in lines and "http-check expect status 200" in lines
    assert any(
        line.startswith("default-server init-addr none resolvers docker") and " check " in f"{line} " for line in lines
    )
    assert "option redispatch 1" in lines and "retries 3" in lines
    assert "retry-on conn-failure empty-response junk-response response-timeout 0rtt-rejected" in lines
    assert (
        "http-request disable-l7-retry if !{ method GET HEAD OPTIONS PUT DELETE } "
        "!{ req.hdr(idempotency-key) -m found }"
    ) in lines
    assert "bind :3003" in lines and "bind 127.0.0.1:8405" in lines


@pulumi.runtime.test
def test_the_rendered_config_is_valid_for_haproxy(tmp_path: Path) -> None:
    """Debian's haproxy (the tests' image runs the same build) parses the rendered file without a warning."""
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not Path(haproxy).exists():
        pytest.fail("haproxy is not installed: apt-get install haproxy (.ci/run does)", pytrace=False)
    path = tmp_path / "haproxy.cfg"
    path.write_text(render_haproxy_config(ProxyConfig.for_replicas(2, 3003, 30)))
    result = subprocess.run([haproxy, "-c", "-f", str(path)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "WARNING" not in result.stdout + result.stderr, result.stdout + result.stderr


@pytest.mark.parametrize("stack", ["dev", "prod"])
@pulumi.runtime.test
async def test_the_proxy_container_follows_the_api_containers_standards(stack: str) -> None:
    run = await ProgramRun.for_stack(stack).run()
    (proxy,) = children_of(run, "EdgeProxy")
    (image,) = children_of(run, "EdgeProxy", "docker:index/remoteImage:RemoteImage")
    replica = min(children_of(run, "ApiService"), key=lambda r: r.name)
    inputs = proxy.inputs
    assert image.inputs == {"name": "haproxy:3.2", "keepLocally": True} and inputs["image"].startswith("sha256:")
    assert inputs["name"] == {"dev": "novita-gpu-api-proxy-dev", "prod": "novita-gpu-api-proxy"}[stack]
    assert inputs["ports"] == [
        {"internal": 3003, "external": 3003, "ip": "127.0.0.1"}
    ]  # the stack's only published port
    assert inputs["networksAdvanced"] == [{"name": replica.inputs["networksAdvanced"][0]["name"]}]
    assert inputs["restart"] == replica.inputs["restart"]
    assert inputs["healthcheck"] == {**replica.inputs["healthcheck"], "tests": ["CMD", "bash", "-c", HEALTH_PROBE]}
    assert (inputs["memory"], inputs["memorySwap"], inputs["cpus"]) == (128, 128, "0.5")
    assert (inputs["readOnly"], inputs["securityOpts"], inputs["capabilities"]) == (
        True,
        ["no-new-privileges:true"],
        {"drops": ["ALL"]},
    )
    assert inputs["tmpfs"] == {"/tmp": "rw,noexec,nosuid,nodev,size=16m"}
    assert (inputs["stopSignal"], inputs["stopTimeout"], inputs["destroyGraceSeconds"]) == ("SIGUSR1", 30, 30)
    assert (inputs["wait"], inputs["waitTimeout"], inputs["mustRun"]) == (True, replica.inputs["waitTimeout"], True)
    assert inputs["logOpts"] == {"max-size": "10m", "max-file": "3"}
    assert inputs["labels"] == [
        {"label": "novita-gpu-api.role", "value": "proxy"},
        {"label": "novita-gpu-api.stack", "value": stack},
    ]
    assert proxy.delete_before_replace is True  # fixed name and published port; a rollout of the API never touches it
    assert run.outputs["proxyContainerNames"].value == [inputs["name"]]


@pulumi.runtime.test
async def test_proxy_limits_and_local_image_are_settings() -> None:
    run = await ProgramRun.for_stack(
        "dev",
        {
            "proxyMemoryMb": "256",
            "proxyCpus": "1",
            "proxyImage": "novita-gpu-api/haproxy-test:bookworm",
            "proxyPullImage": "false",
        },
    ).run()
    (proxy,) = children_of(run, "EdgeProxy")
    assert children_of(run, "EdgeProxy", "docker:index/remoteImage:RemoteImage") == []
    assert proxy.inputs["image"] == "novita-gpu-api/haproxy-test:bookworm"
    assert (proxy.inputs["memory"], proxy.inputs["memorySwap"], proxy.inputs["cpus"]) == (256, 256, "1.0")


@pulumi.runtime.test
async def test_replicas_are_chained_so_a_rollout_goes_one_at_a_time() -> None:
    run = await ProgramRun.for_stack("prod", {"apiReplicas": "4"}).run()
    replicas = sorted(children_of(run, "ApiService"), key=lambda r: r.name)
    assert [r.name for r in replicas] == [f"novita-gpu-instance-api-{i}" for i in range(1, 5)]
    replica_urns = {r.urn for r in replicas}
    assert not replica_urns & set(replicas[0].dependencies)
    for previous, replica in itertools.pairwise(replicas):
        assert [urn for urn in replica.dependencies if urn in replica_urns] == [previous.urn]
    for replica in replicas:
        assert replica.delete_before_replace is False and "name" not in replica.inputs and "ports" not in replica.inputs
        assert (replica.inputs["wait"], replica.inputs["mustRun"]) == (True, True)
        assert replica.inputs["networksAdvanced"][0]["aliases"] == ["api-replicas"]
        assert replica.inputs["labels"] == [
            {"label": "novita-gpu-api.role", "value": "api"},
            {"label": "novita-gpu-api.stack", "value": "prod"},
        ]
    assert run.outputs["apiReplicas"].value == 4 and len(run.outputs["containerNames"].value) == 4


@pulumi.runtime.test
async def test_every_replica_gets_the_secrets_as_secrets_and_the_proxy_none() -> None:
    run = await ProgramRun.for_stack("prod").run()
    for replica in children_of(run, "ApiService"):
        for index, entry in enumerate(replica.inputs["envs"]):
            name = entry.split("=", 1)[0]
            assert replica.is_secret(f"envs[{index}]") == (
                name in ("REDIS_URL", "NOVITA_API_KEY", "API_KEYS", "API_KEY_HASH_SECRET")
            ), name
    (proxy,) = children_of(run, "EdgeProxy")
    assert not any(value in str(proxy.inputs) for value in TEST_SECRETS.values())


@pulumi.runtime.test
async def test_the_local_engine_needs_no_explicit_provider() -> None:
    run = await ProgramRun.for_stack("dev").run()
    assert run.all(PROVIDER) == []
    assert run.outputs["dockerHosts"].value == ["local"]


@pulumi.runtime.test
async def test_one_provider_per_host_each_with_its_own_network_image_replicas_and_proxy() -> None:
    run = await ProgramRun.for_stack("prod", {"dockerHosts": TWO_SSH_HOSTS}).run()

    def by_name(type_: str, component: str = "") -> list[Registration]:  # registration order is not fixed
        return sorted(children_of(run, component, type_) if component else run.all(type_), key=lambda r: r.name)

    providers = by_name(PROVIDER)
    assert [(p.name, p.inputs["host"]) for p in providers] == [
        ("docker", "ssh://deploy@api-a.example.com"),
        ("docker-h2", "ssh://deploy@api-b.example.com:2222"),
    ]
    networks = by_name("docker:index/network:Network")
    images = sorted(run.all("docker:index/image:Image"), key=lambda r: run.by_urn(r.parent).name)
    proxies = sorted(children_of(run, "EdgeProxy"), key=lambda r: run.by_urn(r.parent).name)
    replicas = by_name(CONTAINER, "ApiService")
    assert [r.name for r in replicas] == [
        "novita-gpu-instance-api-1",
        "novita-gpu-instance-api-2",
        "novita-gpu-instance-api-h2-1",
        "novita-gpu-instance-api-h2-2",
    ]
    for number, provider in enumerate(providers):
        reference = provider.urn + "::"
        assert networks[number].provider.startswith(reference) and images[number].provider.startswith(reference)
        assert proxies[number].provider.startswith(reference)
        assert all(r.provider.startswith(reference) for r in replicas[2 * number : 2 * number + 2])
    # Hosts roll one after another: the second host's first replica waits for the first host's last one.
    assert replicas[1].urn in replicas[2].dependencies
    assert len(run.outputs["containerNames"].value) == 4 and len(run.outputs["proxyContainerNames"].value) == 2


@pulumi.runtime.test
async def test_tcp_hosts_get_their_tls_client_material_as_secrets() -> None:
    run = await ProgramRun.for_stack("prod", {"dockerHosts": '["tcp://10.0.0.5:2376"]'}, TLS_SECRETS).run()
    (provider,) = run.all(PROVIDER)
    assert (
        provider.inputs["host"],
        provider.inputs["caMaterial"],
        provider.inputs["certMaterial"],
        provider.inputs["keyMaterial"],
    ) == (
        "tcp://10.0.0.5:2376",
        TLS_SECRETS["dockerTlsCa"],
        TLS_SECRETS["dockerTlsCert"],
        TLS_SECRETS["dockerTlsKey"],
    )
    assert all(provider.is_secret(key) for key in ("caMaterial", "certMaterial", "keyMaterial"))
    for output in run.outputs.values():
        assert not any(value in str(output.value) for value in TLS_SECRETS.values())


@pulumi.runtime.test
async def test_ssh_hosts_get_no_tls_material() -> None:
    run = await ProgramRun.for_stack("prod", {"dockerHosts": TWO_SSH_HOSTS}, TLS_SECRETS).run()
    assert not any({"caMaterial", "certMaterial", "keyMaterial"} & set(p.inputs) for p in run.all(PROVIDER))
