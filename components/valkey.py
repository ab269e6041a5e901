"""The Valkey the API queues and caches on: Aiven for Valkey (prod) or a local container (dev, tests)."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import quote

import pulumi
import pulumi_aiven as aiven
import pulumi_docker as docker

from components.config import AivenValkeySettings, LocalValkeySettings
from components.config.types import secret_output

LOCAL_WAIT_TIMEOUT_SECONDS = 60
# The alias the API reaches the local Valkey by on the private network.
LOCAL_NETWORK_ALIAS = "valkey"

# What the API's least-privilege ACL user (`valkeyAppUser`) may touch: its own keys only (every key the API writes
# starts with `ngpu:`), and only the commands it sends (app/core, app/jobs, app/instances, app/lifecycle, including
# those inside its Lua scripts). tests/app/test_hardening_valkey_acl.py runs the API against a real server with
# exactly these rules, so a command the API starts using without being listed here fails that test.
APP_KEY_PATTERNS = ("ngpu:*",)
# One line per kind of command: connection, transactions, strings, hashes, sets, sorted sets, streams, Lua.
# fmt: off
APP_COMMANDS = (
    "hello", "ping",
    "multi", "exec", "discard", "watch", "unwatch",
    "get", "set", "getdel", "mget", "del", "unlink", "exists", "expire", "pexpire", "incr", "incrby", "time",
    "hset", "hget", "hmget", "hgetall", "hincrby", "hdel",
    "sadd", "srem", "smembers",
    "zadd", "zrem", "zcard", "zscore", "zrange", "zrangebyscore", "zrevrange", "zrevrangebyscore",
    "xadd", "xack", "xdel", "xlen", "xreadgroup", "xautoclaim", "xclaim",
    "xgroup|create", "xgroup|delconsumer", "xinfo|groups", "xinfo|consumers",
    "eval", "evalsha",
)
# fmt: on


@dataclass(frozen=True)
class ValkeyArgs:
    """Inputs of `Valkey`: the settings of the Valkey to run (`target`: local container or Aiven), and where."""

    target: LocalValkeySettings | AivenValkeySettings
    production: bool
    network_name: pulumi.Input[str] | None = None  # the private network; None = host network
    labels: dict[str, str] = field(default_factory=dict)  # of the local container

    def __post_init__(self) -> None:
        if isinstance(self.target, AivenValkeySettings) and (self.target.token is None or not self.target.project):
            raise ValueError("ValkeyArgs: Aiven needs a project and a token")


def require_tls(url: str) -> str:
    """`url` if it is a TLS URL; Aiven mode never lets the API talk to Valkey in clear text."""
    if not url.startswith("rediss://"):
        raise ValueError("the Aiven Valkey URL is not a TLS (rediss://) URL; valkey_ssl must stay on")
    return url


def app_user_url(host: str, port: int, username: str, password: str) -> str:
    """The TLS URL of the API's ACL user (user and password URL-encoded)."""
    return f"rediss://{quote(username, safe='')}:{quote(password, safe='')}@{host}:{port}"


def api_url(service_uri: str) -> str:
    """The URL the API's client accepts: Aiven shows `valkeys://`, which redis-py knows as `rediss://`."""
    if service_uri.startswith("valkeys://"):
        return "rediss://" + service_uri.removeprefix("valkeys://")
    if service_uri.startswith("valkey://"):
        return "redis://" + service_uri.removeprefix("valkey://")
    return service_uri


class Valkey(pulumi.ComponentResource):
    """A Valkey reachable by the API. Same outputs in both modes: host, port, tls and a secret `url`."""

    host: pulumi.Output[str]
    port: pulumi.Output[int]
    tls: pulumi.Output[bool]
    url: pulumi.Output[str]

    def __init__(self, name: str, args: ValkeyArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("novita-gpu-api:index:Valkey", name, None, opts)
        if isinstance(args.target, AivenValkeySettings):
            self._aiven(name, args.target, args.production)
        else:
            self._local(name, args.target, args.network_name, args.labels)
        self.register_outputs({"host": self.host, "port": self.port, "tls": self.tls, "url": self.url})

    def _aiven(self, name: str, cfg: AivenValkeySettings, production: bool) -> None:
        assert cfg.token is not None  # ValkeyArgs refuses Aiven without a token
        provider = aiven.Provider(
            f"{name}-aiven", api_token=secret_output(cfg.token), opts=pulumi.ResourceOptions(parent=self)
        )
        service = aiven.Valkey(
            f"{name}-service",
            project=cfg.project,
            cloud_name=cfg.cloud,
            plan=cfg.plan,
            service_name=cfg.service_name,
            maintenance_window_dow=cfg.maintenance_dow,
            maintenance_window_time=cfg.maintenance_time,
            termination_protection=production,
            valkey_user_config=aiven.ValkeyValkeyUserConfigArgs(
                valkey_ssl=True,
                valkey_persistence="rdb",
                valkey_maxmemory_policy="noeviction",
                ip_filter_strings=list(cfg.ip_allow_list),
            ),
            opts=pulumi.ResourceOptions(parent=self, provider=provider, protect=production),
        )
        self.host = service.service_host
        self.port = service.service_port
        self.tls = pulumi.Output.from_input(True)
        if cfg.app_user:
            user = aiven.ValkeyUser(
                f"{name}-app-user",
                project=cfg.project,
                service_name=service.service_name,
                username=cfg.app_user,
                # No password input: Aiven generates one; it only ever flows as a secret, into the URL below.
                valkey_acl_categories=["-@all"],
                valkey_acl_commands=[f"+{command}" for command in APP_COMMANDS],
                valkey_acl_keys=list(APP_KEY_PATTERNS),
                opts=pulumi.ResourceOptions(parent=self, provider=provider, additional_secret_outputs=["password"]),
            )
            url = pulumi.Output.all(self.host, self.port, user.username, user.password).apply(
                lambda parts: app_user_url(*parts)
            )
        else:
            url = service.service_uri.apply(api_url)
        # The SDK marks service_uri secret only through additional_secret_outputs; wrap it so it stays secret
        # everywhere it flows (and so the mocks, which ignore that option, can check it).
        self.url = pulumi.Output.secret(url.apply(require_tls))

    def _local(
        self, name: str, cfg: LocalValkeySettings, network_name: pulumi.Input[str] | None, labels: dict[str, str]
    ) -> None:
        child = pulumi.ResourceOptions(parent=self)
        image: pulumi.Input[str] = cfg.image
        if cfg.pull_image:
            image = docker.RemoteImage(f"{name}-image", name=cfg.image, keep_locally=True, opts=child).image_id
        volume = docker.Volume(f"{name}-data", name=cfg.volume_name, opts=child)
        on_host_network = network_name is None
        # On the host network Valkey listens on loopback only; on the private network every peer may connect
        # (protected mode would refuse them, since this dev Valkey has no password).
        bind = "127.0.0.1" if on_host_network else "0.0.0.0"
        container = docker.Container(
            f"{name}-container",
            name=cfg.container_name,
            image=image,
            command=[
                cfg.server_binary,
                "--port",
                str(cfg.port),
                "--bind",
                bind,
                "--protected-mode",
                "no",
                "--dir",
                "/data",
                "--appendonly",
                "yes",
                "--maxmemory-policy",
                "noeviction",
            ],
            restart="unless-stopped",
            network_mode="host" if on_host_network else "bridge",
            networks_advanced=None
            if network_name is None
            else [docker.ContainerNetworksAdvancedArgs(name=network_name, aliases=[LOCAL_NETWORK_ALIAS])],
            volumes=[docker.ContainerVolumeArgs(volume_name=volume.name, container_path="/data")],
            # Short, because `pulumi up` waits for the local Valkey to be healthy before starting the API.
            healthcheck=docker.ContainerHealthcheckArgs(
                tests=["CMD", cfg.cli_binary, "-p", str(cfg.port), "ping"],
                interval="5s",
                timeout="3s",
                retries=5,
                start_period="10s",
            ),
            labels=[docker.ContainerLabelArgs(label=key, value=value) for key, value in sorted(labels.items())],
            read_only=True,
            tmpfs={"/tmp": "rw,noexec,nosuid,size=16m"},
            security_opts=["no-new-privileges:true"],
            wait=True,
            wait_timeout=LOCAL_WAIT_TIMEOUT_SECONDS,
            opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True, replace_on_changes=["healthcheck"]),
        )
        host = "127.0.0.1" if on_host_network else LOCAL_NETWORK_ALIAS
        self.host = container.id.apply(lambda _: host)  # known once the container exists, so the API waits for it
        self.port = pulumi.Output.from_input(cfg.port)
        self.tls = pulumi.Output.from_input(False)
        self.url = pulumi.Output.secret(self.host.apply(lambda h: f"redis://{h}:{cfg.port}/0"))
