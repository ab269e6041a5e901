"""The API container: the restart policy, healthcheck, limits and secrets that fixed the seed's outages."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import pulumi
import pulumi_docker as docker

from components.edge_proxy import REPLICA_DRAIN_SECONDS, REPLICAS_ALIAS
from components.settings import StackSettings

CONTAINER_PORT = 3003


@dataclass(frozen=True)
class ApiServiceArgs:
    """Inputs of `ApiService`."""

    settings: StackSettings
    image_id: pulumi.Input[str]
    valkey_url: pulumi.Output[str]
    network_name: Optional[pulumi.Input[str]] = None  # None = host network
    labels: dict[str, str] = field(default_factory=dict)
    provider: Optional[docker.Provider] = None  # None: the default provider (the local engine)
    replica_name_prefix: str = ""  # default: settings.container_name; per-host prefixes keep resource names unique
    after: Optional[pulumi.Resource] = None  # the previous host's last replica: hosts roll one after another

    def __post_init__(self) -> None:
        if (self.network_name is None) != self.settings.uses_host_network:
            raise ValueError("ApiServiceArgs.network_name must be given exactly when networkMode is bridge")


def _secret_env(name: str, value: pulumi.Output[str]) -> pulumi.Output[str]:
    return pulumi.Output.secret(value).apply(lambda v: f"{name}={v}")


def environment(args: ApiServiceArgs) -> list[pulumi.Input[str]]:
    """The container contract of docs/architecture.md: plain settings in clear, secrets as secret Outputs."""
    s = args.settings
    listen_host, listen_port = (s.api_host_address, s.api_port) if s.uses_host_network else ("0.0.0.0", CONTAINER_PORT)
    envs: list[pulumi.Input[str]] = [
        f"APP_ENV={s.app_env}",
        f"HOST={listen_host}",
        f"PORT={listen_port}",
        f"LOG_LEVEL={s.log_level}",
        f"NOVITA_BASE_URL={s.novita_base_url}",
        f"FAULT_INJECTION={'true' if s.fault_injection else 'false'}",
        f"HEALTHCHECK_TIMEOUT_SECONDS={s.healthcheck.probe_timeout_seconds}",
        f"HEALTHCHECK_KILL_AFTER={s.healthcheck.kill_after}",
        # Behind the proxy: not ready first, then stop, so the proxy takes the replica out before it stops serving.
        f"SHUTDOWN_DRAIN_SECONDS={0 if s.uses_host_network else REPLICA_DRAIN_SECONDS}",
        _secret_env("REDIS_URL", args.valkey_url),
        _secret_env("NOVITA_API_KEY", s.secrets.novita_api_key),
    ]
    if s.secrets.api_keys is not None:
        envs.append(_secret_env("API_KEYS", s.secrets.api_keys))
    return envs


def hardening(settings: StackSettings) -> dict:
    """Container arguments that shrink what a compromised API process can do (issue 6 item 3)."""
    h = settings.hardening
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

    def __init__(self, name: str, args: ApiServiceArgs, opts: Optional[pulumi.ResourceOptions] = None) -> None:
        super().__init__("novita-gpu-api:index:ApiService", name, None, opts)
        s = args.settings
        hc = s.healthcheck
        common = dict(
            image=args.image_id,
            restart=s.restart_policy,
            healthcheck=docker.ContainerHealthcheckArgs(
                tests=list(hc.tests),
                interval=hc.interval,
                timeout=hc.timeout,
                retries=hc.retries,
                start_period=hc.start_period,
                start_interval=hc.start_interval,
            ),
            memory=s.memory_mb,
            memory_swap=s.memory_swap_mb,
            cpus=s.cpus,
            envs=environment(args),
            labels=[docker.ContainerLabelArgs(label=key, value=value) for key, value in sorted(args.labels.items())],
            log_driver="json-file",
            log_opts={"max-size": s.log_max_size, "max-file": str(s.log_max_file)},
            init=True,
            stop_signal="SIGTERM",
            stop_timeout=s.stop_grace_seconds,
            destroy_grace_seconds=s.stop_grace_seconds,
            must_run=True,
            wait=True,
            wait_timeout=hc.wait_timeout_seconds,
            **hardening(s),
        )
        # Docker cannot update a healthcheck or init in place (kreuzwerker#988): replace instead.
        replace_on_changes = ["healthcheck", "init"]
        if s.uses_host_network:
            # Listens on the host's port itself: the old container must go before the new one can start.
            replicas = [docker.Container(
                f"{name}-container", name=s.container_name, network_mode="host", **common,
                opts=pulumi.ResourceOptions(
                    parent=self, provider=args.provider, replace_on_changes=replace_on_changes,
                    delete_before_replace=True,
                ),
            )]
        else:
            replicas = []
            previous = args.after
            for index in range(1, s.edge.api_replicas + 1):
                # No `name`: Pulumi auto-names it from the resource name, so old and new can run side by side.
                replica = docker.Container(
                    f"{args.replica_name_prefix or s.container_name}-{index}",
                    networks_advanced=[docker.ContainerNetworksAdvancedArgs(name=args.network_name, aliases=[REPLICAS_ALIAS])],
                    **common,
                    opts=pulumi.ResourceOptions(
                        parent=self, provider=args.provider, replace_on_changes=replace_on_changes,
                        depends_on=[previous] if previous is not None else None,
                    ),
                )
                replicas.append(replica)
                previous = replica
        self.last_replica = replicas[-1]
        self.container_names = pulumi.Output.all(*[replica.name for replica in replicas])
        self.api_url = pulumi.Output.from_input(f"http://{s.api_host_address}:{s.api_port}")
        self.health_url = self.api_url.apply(lambda url: f"{url}/health")
        self.register_outputs(
            {"container_names": self.container_names, "api_url": self.api_url, "health_url": self.health_url}
        )
