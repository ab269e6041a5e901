"""The edge proxy on one Docker host: HAProxy publishes the API port and sends each request to a ready replica.

Why HAProxy: its `server-template` + `resolvers` follow the replicas through Docker's DNS (one network alias shared
by every replica, old and new generation alike), so the proxy's configuration never changes during a rollout and
the proxy container is not touched by one. Each address it resolves gets its own active readiness check
(`GET /readyz`), and a replica only takes traffic once that check passes. `retry-on` + `option redispatch` resend
a request on another replica when one goes away mid-request (idempotent requests only, or POSTs carrying an
Idempotency-Key). Users run the official image (`haproxy:3.2`); the tests run Debian's build of the same program.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_docker as docker

from components.config import ContainerSettings, HealthcheckSettings, ProxySettings
from components.edge_standards import edge_container_args, edge_container_options

# The rendered configuration reaches the container in this env var and is written to the tmpfs at start: Docker
# refuses file uploads into a read-only root filesystem, and the proxy keeps the API's hardening.
CONFIG_ENV = "HAPROXY_CONFIG"
CONFIG_PATH = "/tmp/haproxy.cfg"
START_COMMAND = ["bash", "-c", f'printf "%s" "${CONFIG_ENV}" > {CONFIG_PATH} && exec haproxy -W -db -f {CONFIG_PATH}']
# The network alias every API replica carries; HAProxy resolves it through Docker's embedded DNS.
REPLICAS_ALIAS = "api-replicas"
DOCKER_DNS = "127.0.0.11:53"
# Loopback-only listener inside the proxy container that its own healthcheck asks (liveness of HAProxy itself:
# restarting the proxy cannot make an API replica ready, so the replicas' state is not part of it).
HEALTH_PORT = 8405
# The container probe without curl (neither image has it): bash's /dev/tcp, a status line with " 200 ".
HEALTH_PROBE = (
    f"exec 3<>/dev/tcp/127.0.0.1/{HEALTH_PORT} && printf 'GET / HTTP/1.0\\r\\n\\r\\n' >&3 "
    "&& read -r -t 2 status <&3 && [[ $status == *' 200 '* ]]"
)
# Readiness checks of the replicas: every second; 2 failures take a replica out, 2 passes put it in.
CHECK_INTERVAL_SECONDS = 1
CHECK_INTERVAL = f"{CHECK_INTERVAL_SECONDS}s"
CHECK_FALL = 2
CHECK_RISE = 2
# How long a stopping replica answers /readyz 503 while still serving (the app's SHUTDOWN_DRAIN_SECONDS): long
# enough for the proxy to take it out (CHECK_FALL failed checks) before its listener closes, plus one check more.
REPLICA_DRAIN_SECONDS = (CHECK_FALL + 1) * CHECK_INTERVAL_SECONDS
# Each request is tried at most this many more times, each time on another replica.
RETRIES = 3


@dataclass(frozen=True)
class ProxyConfig:
    """What the rendered HAProxy configuration depends on (all from the stack settings)."""

    listen_port: int  # inside the container; published on the host by the container's port mapping
    replica_port: int
    server_slots: int  # addresses HAProxy can track at once: old and new replicas side by side during a rollout
    stop_grace_seconds: int

    @classmethod
    def for_replicas(cls, replicas: int, port: int, stop_grace_seconds: int) -> ProxyConfig:
        return cls(
            listen_port=port, replica_port=port, server_slots=2 * replicas, stop_grace_seconds=stop_grace_seconds
        )


def render_haproxy_config(config: ProxyConfig) -> str:
    """The whole haproxy.cfg for one host. Pure: the same settings always give the same text (no drift)."""
    return f"""\
# Rendered by components/edge_proxy.py from the stack settings: edit the stack config, not this file.
global
    log stdout format raw local0 notice
    maxconn 4096
    # A soft stop (SIGUSR1) lets in-flight requests finish, within the API's own stop grace period.
    hard-stop-after {config.stop_grace_seconds}s

resolvers docker
    nameserver docker {DOCKER_DNS}
    accepted_payload_size 8192
    resolve_retries 3
    timeout resolve 1s
    timeout retry 1s
    hold valid 1s
    hold obsolete 0s
    hold nx 1s

defaults
    mode http
    log global
    option dontlognull
    timeout connect 1s
    timeout client 60s
    # Longer than the API's slowest answer (a Novita call: 15 s timeout); a request stuck on a frozen replica
    # is resent elsewhere after this (retry-on response-timeout).
    timeout server 30s
    timeout check 2s
    timeout http-request 10s
    timeout http-keep-alive 4s
    timeout queue 10s
    retries {RETRIES}
    option redispatch 1
    retry-on conn-failure empty-response junk-response response-timeout 0rtt-rejected
    default-server init-addr none resolvers docker resolve-prefer ipv4 check inter {CHECK_INTERVAL} fall {CHECK_FALL} rise {CHECK_RISE}

frontend proxy_health
    bind 127.0.0.1:{HEALTH_PORT}
    http-request return status 200 content-type text/plain string ok

frontend api
    bind :{config.listen_port}
    # Only requests that are safe to send twice are resent after they reached a replica.
    http-request disable-l7-retry if !{{ method GET HEAD OPTIONS PUT DELETE }} !{{ req.hdr(idempotency-key) -m found }}
    default_backend replicas

backend replicas
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    server-template replica 1-{config.server_slots} {REPLICAS_ALIAS}:{config.replica_port}
"""


@dataclass(frozen=True)
class EdgeProxyArgs:
    """Inputs of `EdgeProxy`: the proxy's own settings, and the API container and healthcheck settings it follows
    (replica count and port, published address, restart policy, stop grace, log rotation, probe timing)."""

    proxy: ProxySettings
    container: ContainerSettings
    healthcheck: HealthcheckSettings
    api_port: int  # the port inside the network (the replicas') and inside the proxy container
    network_name: pulumi.Input[str]
    labels: dict[str, str]
    provider: docker.Provider | None = None


class EdgeProxy(pulumi.ComponentResource):
    """The proxy container of one host, running the configuration rendered from the settings."""

    container_name: pulumi.Output[str]

    def __init__(self, name: str, args: EdgeProxyArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("novita-gpu-api:index:EdgeProxy", name, None, opts)
        proxy, c, hc = args.proxy, args.container, args.healthcheck
        child = pulumi.ResourceOptions(parent=self, provider=args.provider)
        image: pulumi.Input[str] = proxy.image
        if proxy.pull_image:
            image = docker.RemoteImage(f"{name}-image", name=proxy.image, keep_locally=True, opts=child).image_id
        config = render_haproxy_config(ProxyConfig.for_replicas(c.replicas, args.api_port, c.stop_grace_seconds))
        container = docker.Container(
            f"{name}-container",
            name=proxy.container_name,
            image=image,
            command=START_COMMAND,
            envs=[f"{CONFIG_ENV}={config}"],
            networks_advanced=[docker.ContainerNetworksAdvancedArgs(name=args.network_name)],
            # The only published port of the stack: loopback by default, as the API's was.
            ports=[docker.ContainerPortArgs(internal=args.api_port, external=c.api_port, ip=c.api_host_address)],
            # SIGUSR1 is HAProxy's soft stop (the official image's STOPSIGNAL): finish in-flight requests, then exit.
            **edge_container_args(
                proxy=proxy,
                container=c,
                healthcheck=hc,
                probe=["CMD", "bash", "-c", HEALTH_PROBE],
                stop_signal="SIGUSR1",
                labels=args.labels,
            ),
            opts=edge_container_options(self, args.provider),
        )
        self.container_name = container.name
        self.register_outputs({"container_name": self.container_name})
