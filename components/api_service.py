"""The API container: the restart policy, healthcheck, limits and secrets that fixed the seed's outages."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_docker as docker
from pydantic import SecretStr

from components.config import (
    ContainerSettings,
    HardeningSettings,
    HealthcheckSettings,
    JobSettings,
    LifecycleSettings,
    ServiceSettings,
    WebhookSettings,
)
from components.config.models import Concern, container_variables
from components.config.types import secret_output
from components.edge_proxy import REPLICA_DRAIN_SECONDS, REPLICAS_ALIAS

CONTAINER_PORT = 3003
# Variables the program derives rather than passes through from one setting: {name: sent as a secret}.
DERIVED_VARIABLES = {
    "HOST": False,
    "PORT": False,
    "HEALTHCHECK_TIMEOUT_SECONDS": False,
    "HEALTHCHECK_KILL_AFTER": False,
    "SHUTDOWN_DRAIN_SECONDS": False,  # follows the edge proxy's readiness check timing, not a setting of its own
    "REDIS_URL": True,
}
# The settings models whose fields declare an environment variable (models.setting(env=...)).
RUNTIME_CONCERNS = (ServiceSettings, JobSettings, LifecycleSettings, WebhookSettings)


def container_contract() -> dict[str, bool]:
    """Every environment variable the program may give the API container: {name: sent as a secret}."""
    contract = dict(DERIVED_VARIABLES)
    for concern in RUNTIME_CONCERNS:
        contract.update(dict(container_variables(concern).values()))
    return contract


@dataclass(frozen=True)
class ApiServiceArgs:
    """Inputs of `ApiService`: the settings concerns it uses, the image to run and the Valkey URL."""

    service: ServiceSettings
    jobs: JobSettings
    lifecycle: LifecycleSettings
    webhooks: WebhookSettings
    container: ContainerSettings
    healthcheck: HealthcheckSettings
    hardening: HardeningSettings
    image_id: pulumi.Input[str]
    valkey_url: pulumi.Output[str]
    network_name: pulumi.Input[str] | None = None  # None = host network
    labels: dict[str, str] = field(default_factory=dict)
    provider: docker.Provider | None = None  # None: the default provider (the local engine)
    replica_name_prefix: str = ""  # default: containerName; per-host prefixes keep resource names unique
    after: pulumi.Resource | None = None  # the previous host's last replica: hosts roll one after another

    def __post_init__(self) -> None:
        if (self.network_name is None) != self.container.uses_host_network:
            raise ValueError("ApiServiceArgs.network_name must be given exactly when networkMode is bridge")

    @property
    def runtime(self) -> tuple[Concern, ...]:
        """The concerns passed to the API through its environment."""
        return (self.service, self.jobs, self.lifecycle, self.webhooks)


def _secret_env(name: str, value: pulumi.Input[str]) -> pulumi.Output[str]:
    return pulumi.Output.secret(value).apply(lambda v: f"{name}={v}")


def _env_text(value: Any) -> str:
    """A setting as the API reads it: booleans as true/false, lists comma-separated."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(value)
    return str(value)


def environment(args: ApiServiceArgs) -> list[pulumi.Input[str]]:
    """The container contract of docs/architecture.md: plain settings in clear, secrets as secret Outputs.
    A setting left empty is not passed, so the API's own default (or "off") applies."""
    c, hc = args.container, args.healthcheck
    listen_host, listen_port = (c.api_host_address, c.api_port) if c.uses_host_network else ("0.0.0.0", CONTAINER_PORT)
    envs: list[pulumi.Input[str]] = [
        f"HOST={listen_host}",
        f"PORT={listen_port}",
        f"HEALTHCHECK_TIMEOUT_SECONDS={hc.probe_timeout_seconds}",
        f"HEALTHCHECK_KILL_AFTER={hc.kill_after}",
        # Behind the proxy: not ready first, then stop, so the proxy takes the replica out before it stops serving.
        f"SHUTDOWN_DRAIN_SECONDS={0 if c.uses_host_network else REPLICA_DRAIN_SECONDS}",
        _secret_env("REDIS_URL", args.valkey_url),
    ]
    for concern in args.runtime:
        for field_name, (variable, secret) in container_variables(type(concern)).items():
            value = getattr(concern, field_name)
            if value is None or value == "" or value == ():
                continue
            if isinstance(value, SecretStr):
                envs.append(_secret_env(variable, secret_output(value)))
            elif secret:
                envs.append(_secret_env(variable, _env_text(value)))
            else:
                envs.append(f"{variable}={_env_text(value)}")
    return envs


def hardening(h: HardeningSettings) -> dict:
    """Container arguments that shrink what a compromised API process can do (issue 6 item 3)."""
    if not h.enabled:
        return {}
    return {
        "read_only": True,
        "tmpfs": {"/tmp": f"rw,noexec,nosuid,nodev,size={h.tmpfs_size_mb}m"},
        "security_opts": ["no-new-privileges:true"],
        "capabilities": docker.ContainerCapabilitiesArgs(drops=["ALL"]),
        "user": h.user,
        # pulumi-docker 5.2 has no pids_limit; RLIMIT_NPROC bounds the processes and threads of the non-root user.
        "ulimits": [docker.ContainerUlimitArgs(name="nproc", soft=h.pids_limit, hard=h.pids_limit)],
    }


class ApiService(pulumi.ComponentResource):
    """The API replicas of one Docker host; `pulumi up` fails naming the first replica that never turns healthy.

    On the private network (bridge) each replica is auto-named `<containerName>-<i>-<suffix>`, publishes nothing
    (the edge proxy does) and is replaced create-before-delete: the new replica must be healthy (`wait=True`)
    before Pulumi deletes the old one. Replica i depends on replica i-1, so a rollout goes one replica at a time
    and a bad image stops at the first. On the host network (tests) there is one fixed-name container.
    """

    container_names: pulumi.Output[list[str]]
    api_url: pulumi.Output[str]
    health_url: pulumi.Output[str]
    last_replica: docker.Container

    def __init__(self, name: str, args: ApiServiceArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("novita-gpu-api:index:ApiService", name, None, opts)
        c, hc = args.container, args.healthcheck
        common = dict(
            image=args.image_id,
            restart=c.restart_policy,
            healthcheck=docker.ContainerHealthcheckArgs(
                tests=list(hc.tests),
                interval=hc.interval,
                timeout=hc.timeout,
                retries=hc.retries,
                start_period=hc.start_period,
                start_interval=hc.start_interval,
            ),
            memory=c.memory_mb,
            memory_swap=c.memory_swap_mb,
            cpus=c.cpus,
            envs=environment(args),
            labels=[docker.ContainerLabelArgs(label=key, value=value) for key, value in sorted(args.labels.items())],
            log_driver="json-file",
            log_opts={"max-size": c.log_max_size, "max-file": str(c.log_max_file)},
            init=True,
            stop_signal="SIGTERM",
            stop_timeout=c.stop_grace_seconds,
            destroy_grace_seconds=c.stop_grace_seconds,
            must_run=True,
            wait=True,
            wait_timeout=hc.wait_timeout_seconds,
            **hardening(args.hardening),
        )
        # Docker cannot update a healthcheck or init in place (kreuzwerker#988): replace instead.
        replace_on_changes = ["healthcheck", "init"]
        if args.network_name is None:  # the host network (ApiServiceArgs checks it matches networkMode)
            # Listens on the host's port itself: the old container must go before the new one can start.
            replicas = [
                docker.Container(
                    f"{name}-container",
                    name=c.name,
                    network_mode="host",
                    **common,
                    opts=pulumi.ResourceOptions(
                        parent=self,
                        provider=args.provider,
                        replace_on_changes=replace_on_changes,
                        delete_before_replace=True,
                    ),
                )
            ]
        else:
            replicas = []
            previous = args.after
            for index in range(1, c.replicas + 1):
                # No `name`: Pulumi auto-names it from the resource name, so old and new can run side by side.
                replica = docker.Container(
                    f"{args.replica_name_prefix or c.name}-{index}",
                    networks_advanced=[
                        docker.ContainerNetworksAdvancedArgs(name=args.network_name, aliases=[REPLICAS_ALIAS])
                    ],
                    **common,
                    opts=pulumi.ResourceOptions(
                        parent=self,
                        provider=args.provider,
                        replace_on_changes=replace_on_changes,
                        depends_on=[previous] if previous is not None else None,
                    ),
                )
                replicas.append(replica)
                previous = replica
        self.last_replica = replicas[-1]
        self.container_names = pulumi.Output.all(*[replica.name for replica in replicas])
        self.api_url = pulumi.Output.from_input(f"http://{c.api_host_address}:{c.api_port}")
        self.health_url = self.api_url.apply(lambda url: f"{url}/health")
        self.register_outputs(
            {"container_names": self.container_names, "api_url": self.api_url, "health_url": self.health_url}
        )
