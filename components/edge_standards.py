"""The container standards every edge container (the HAProxy proxy, the TLS front) shares with the API's: the
restart policy, healthcheck timings, limits with swap = memory, hardening, log rotation and `wait`, in one place so
that the two cannot drift apart."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pulumi
import pulumi_docker as docker

from components.config import ContainerSettings, HealthcheckSettings, ProxySettings


def edge_container_args(
    *,
    proxy: ProxySettings,
    container: ContainerSettings,
    healthcheck: HealthcheckSettings,
    probe: Sequence[str],
    stop_signal: str,
    labels: Mapping[str, str],
) -> dict[str, Any]:
    """`docker.Container` arguments common to the edge containers (limits are the proxy's: both are small)."""
    c, hc = container, healthcheck
    return {
        "restart": c.restart_policy,
        "healthcheck": docker.ContainerHealthcheckArgs(
            tests=list(probe),
            interval=hc.interval,
            timeout=hc.timeout,
            retries=hc.retries,
            start_period=hc.start_period,
        ),
        "memory": proxy.memory_mb,
        "memory_swap": proxy.memory_swap_mb,
        "cpus": proxy.cpus,
        "labels": [docker.ContainerLabelArgs(label=key, value=value) for key, value in sorted(labels.items())],
        "log_driver": "json-file",
        "log_opts": {"max-size": c.log_max_size, "max-file": str(c.log_max_file)},
        "stop_signal": stop_signal,
        "stop_timeout": c.stop_grace_seconds,
        "destroy_grace_seconds": c.stop_grace_seconds,
        "read_only": True,
        "tmpfs": {"/tmp": "rw,noexec,nosuid,nodev,size=16m"},
        "security_opts": ["no-new-privileges:true"],
        "capabilities": docker.ContainerCapabilitiesArgs(drops=["ALL"]),
        "must_run": True,
        "wait": True,
        "wait_timeout": hc.wait_timeout_seconds,
    }


def edge_container_options(parent: pulumi.Resource, provider: pulumi.ProviderResource | None) -> pulumi.ResourceOptions:
    """A fixed name and published ports: the old container goes first, a short gap only when its settings change
    (never on a rollout of the API). A changed healthcheck replaces it (the provider would keep the old one)."""
    return pulumi.ResourceOptions(
        parent=parent, provider=provider, delete_before_replace=True, replace_on_changes=["healthcheck"]
    )
