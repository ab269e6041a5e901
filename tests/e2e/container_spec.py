"""From the Pulumi program's rendered `docker:index/container:Container` inputs to a Docker Engine API create call.

The e2e tests create exactly the container the program declares. So every input the program registers must be
mapped here, and anything this module does not know raises `UnmappedInputError`: a new argument added to the
program then fails the e2e suite until it is mapped, instead of being silently left out of the test.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import docker
import docker.types

MB = 1024 * 1024
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_NS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60 * 1_000_000_000,
    "h": 3600 * 1_000_000_000,
}


class UnmappedInputError(ValueError):
    """The program declares a container input this mapping does not translate."""


def duration_ns(text: str) -> int:
    """A Go duration string (`1m30s`, `500ms`) in nanoseconds, as the Engine API's HealthConfig wants it."""
    if text in ("0", "0s"):
        return 0
    if not text or _DURATION_PART.sub("", text):
        raise ValueError(f"not a Go duration: {text!r}")
    return int(sum(Decimal(number) * _UNIT_NS[unit] for number, unit in _DURATION_PART.findall(text)))


@dataclass
class ProviderBehaviour:
    """Inputs the provider acts on itself rather than sending to Docker; the test harness reproduces them."""

    wait_for_healthy: bool = False
    wait_timeout_seconds: int = 60  # the provider's default
    must_run: bool = True
    start: bool = True
    destroy_grace_seconds: int | None = None


@dataclass
class ContainerSpec:
    """Everything needed to create the container through the low-level docker-py API."""

    image: str
    name: str
    create_kwargs: dict[str, Any] = field(default_factory=dict)  # APIClient.create_container(...)
    host_config_kwargs: dict[str, Any] = field(default_factory=dict)  # APIClient.create_host_config(...)
    provider: ProviderBehaviour = field(default_factory=ProviderBehaviour)
    network: tuple[str, list[str]] | None = None  # networksAdvanced: (network name, aliases)

    def create(self, client: docker.DockerClient, labels: dict[str, str]) -> str:
        """Create (not start) the container with extra `labels`; returns its id."""
        create_kwargs = dict(self.create_kwargs)
        create_kwargs["labels"] = {**create_kwargs.get("labels", {}), **labels}
        host_config = client.api.create_host_config(**self.host_config_kwargs)
        if self.network is not None:
            name, aliases = self.network
            create_kwargs["networking_config"] = client.api.create_networking_config(
                # arg-type: types-docker wants one EndpointConfig; the SDK takes {network: EndpointConfig}
                {name: client.api.create_endpoint_config(aliases=aliases or None)}  # type: ignore[arg-type]
            )
        created = client.api.create_container(self.image, name=self.name, host_config=host_config, **create_kwargs)
        return created["Id"]


def _healthcheck(value: dict[str, Any]) -> dict[str, Any]:
    known = {"tests", "interval", "timeout", "retries", "startPeriod", "startInterval"}
    _refuse_unknown("healthcheck", value, known)
    if value.get("startInterval"):
        # Engine API 1.44+ only; the tests' engine is 1.41. Refuse rather than silently drop the setting.
        raise UnmappedInputError("healthcheck.startInterval needs Docker API 1.44; unset healthcheckStartInterval")
    healthcheck: dict[str, Any] = {"test": list(value["tests"])}
    for source, target in (("interval", "interval"), ("timeout", "timeout"), ("startPeriod", "start_period")):
        if source in value:
            healthcheck[target] = duration_ns(value[source])
    if "retries" in value:
        healthcheck["retries"] = int(value["retries"])
    return healthcheck


def _refuse_unknown(where: str, value: dict[str, Any], known: set[str]) -> None:
    unknown = sorted(set(value) - known)
    if unknown:
        raise UnmappedInputError(f"{where}: no mapping for {unknown}")


def container_spec(inputs: dict[str, Any], auto_name: str = "") -> ContainerSpec:
    """Map rendered Container inputs (the provider's camelCase names) to docker-py arguments; refuse unknown ones."""
    remaining = dict(inputs)
    # No name: Pulumi auto-names the container; the caller gives the harness's stand-in for that name.
    spec = ContainerSpec(image=remaining.pop("image"), name=remaining.pop("name", None) or auto_name)
    create, host = spec.create_kwargs, spec.host_config_kwargs

    def take(key: str) -> Any:
        return remaining.pop(key)

    handlers: dict[str, Any] = {
        "restart": lambda: host.update(
            restart_policy={"Name": take("restart"), "MaximumRetryCount": int(remaining.pop("maxRetryCount", 0))}
        ),
        "maxRetryCount": lambda: None,  # consumed with `restart`
        "healthcheck": lambda: create.update(healthcheck=_healthcheck(take("healthcheck"))),
        "memory": lambda: host.update(mem_limit=int(take("memory")) * MB),
        "memorySwap": lambda: host.update(memswap_limit=int(take("memorySwap")) * MB),
        "cpus": lambda: host.update(nano_cpus=int(Decimal(take("cpus")) * 1_000_000_000)),
        "envs": lambda: create.update(environment=list(take("envs"))),
        "command": lambda: create.update(command=list(take("command"))),
        "logDriver": lambda: host.update(
            log_config=docker.types.LogConfig(type=take("logDriver"), config=dict(remaining.pop("logOpts", {})))
        ),
        "logOpts": lambda: None,  # consumed with `logDriver`
        "init": lambda: host.update(init=bool(take("init"))),
        "readOnly": lambda: host.update(read_only=bool(take("readOnly"))),
        "tmpfs": lambda: host.update(tmpfs=dict(take("tmpfs"))),
        "securityOpts": lambda: host.update(security_opt=list(take("securityOpts"))),
        "capabilities": lambda: _capabilities(take("capabilities"), host),
        "ulimits": lambda: host.update(
            ulimits=[
                docker.types.Ulimit(name=u["name"], soft=int(u["soft"]), hard=int(u["hard"])) for u in take("ulimits")
            ]
        ),
        "pidsLimit": lambda: host.update(pids_limit=int(take("pidsLimit"))),
        "volumes": lambda: host.update(binds=_binds(take("volumes"))),
        "user": lambda: create.update(user=take("user")),
        "networkMode": lambda: host.update(network_mode=take("networkMode")),
        "stopSignal": lambda: create.update(stop_signal=take("stopSignal")),
        "stopTimeout": lambda: create.update(stop_timeout=int(take("stopTimeout"))),
        "labels": lambda: create.update(labels={item["label"]: item["value"] for item in take("labels")}),
        "networksAdvanced": lambda: setattr(spec, "network", _network(take("networksAdvanced"))),
        "ports": lambda: _ports(take("ports"), create, host),
        # Provider-side behaviour, reproduced by the harness (create -> start -> wait for healthy -> remove).
        "wait": lambda: setattr(spec.provider, "wait_for_healthy", bool(take("wait"))),
        "waitTimeout": lambda: setattr(spec.provider, "wait_timeout_seconds", int(take("waitTimeout"))),
        "mustRun": lambda: setattr(spec.provider, "must_run", bool(take("mustRun"))),
        "start": lambda: setattr(spec.provider, "start", bool(take("start"))),
        "destroyGraceSeconds": lambda: setattr(
            spec.provider, "destroy_grace_seconds", int(take("destroyGraceSeconds"))
        ),
    }
    for key in list(remaining):
        if key not in remaining:
            continue  # consumed together with another key
        if key not in handlers:
            raise UnmappedInputError(f"container input {key!r} has no mapping to the Docker Engine API")
        handlers[key]()
    if remaining:  # e.g. `logOpts` without `logDriver`
        raise UnmappedInputError(f"container inputs {sorted(remaining)} were not mapped")
    return spec


def _network(networks: list[dict[str, Any]]) -> tuple[str, list[str]]:
    if len(networks) != 1:
        raise UnmappedInputError(f"networksAdvanced: exactly one network is mapped, got {len(networks)}")
    _refuse_unknown("networksAdvanced[]", networks[0], {"name", "aliases"})
    return networks[0]["name"], list(networks[0].get("aliases", []))


def _ports(ports: list[dict[str, Any]], create: dict[str, Any], host: dict[str, Any]) -> None:
    for port in ports:
        _refuse_unknown("ports[]", port, {"internal", "external", "ip", "protocol"})
        if port.get("protocol", "tcp") != "tcp":
            raise UnmappedInputError(f"ports[]: protocol {port['protocol']!r} is not mapped")
    create["ports"] = [int(port["internal"]) for port in ports]
    host["port_bindings"] = {int(port["internal"]): (port.get("ip", ""), int(port["external"])) for port in ports}


def _binds(volumes: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    binds = {}
    for volume in volumes:
        _refuse_unknown("volumes[]", volume, {"volumeName", "hostPath", "containerPath", "readOnly"})
        source = volume.get("volumeName") or volume["hostPath"]
        binds[source] = {"bind": volume["containerPath"], "mode": "ro" if volume.get("readOnly") else "rw"}
    return binds


def _capabilities(value: dict[str, Any], host: dict[str, Any]) -> None:
    _refuse_unknown("capabilities", value, {"adds", "drops"})
    if value.get("adds"):
        host["cap_add"] = list(value["adds"])
    if value.get("drops"):
        host["cap_drop"] = list(value["drops"])
