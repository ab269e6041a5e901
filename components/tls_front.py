"""HTTPS for a domain on one Docker host: Caddy terminates TLS and hands each request to the edge proxy.

Why Caddy in front of HAProxy: HAProxy has no ACME client, Caddy obtains and renews certificates by itself (ACME in
production; its internal CA in development and tests) and redirects HTTP to HTTPS. HAProxy keeps what it does well
(readiness routing, retries on another replica), reached over the host's private network by its container name.
Users run the official image (`caddy:2`); the tests run Debian's build of the same program.

Caddy listens inside the container on unprivileged ports (the container has no capabilities), published on the host
as `httpsPort` and `httpPort`; its certificates and the internal CA live on a named volume, so a replaced container
keeps them (and ACME's rate limits are not spent again).
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_docker as docker

from components.config import ContainerSettings, HealthcheckSettings, ProxySettings, TlsSettings
from components.edge_standards import edge_container_args, edge_container_options

# Like the edge proxy: the rendered Caddyfile reaches the container in an env var and is written to the tmpfs at start.
CONFIG_ENV = "CADDYFILE"
CONFIG_PATH = "/tmp/Caddyfile"
START_COMMAND = [
    "sh",
    "-c",
    f'printf "%s" "${CONFIG_ENV}" > {CONFIG_PATH} && exec caddy run --config {CONFIG_PATH} --adapter caddyfile',
]
HTTPS_LISTEN_PORT = 8443
HTTP_LISTEN_PORT = 8080
# A loopback-only site that Caddy's own healthcheck asks (liveness of Caddy; the replicas' readiness is HAProxy's job).
HEALTH_PORT = 8405
HEALTH_PROBE = ["CMD", "wget", "-q", "-O", "/dev/null", f"http://127.0.0.1:{HEALTH_PORT}/"]
DATA_PATH = "/data"  # XDG_DATA_HOME: certificates, ACME account, internal CA (the official image's convention)
# Where the internal CA's root certificate lands (clients of a development stack trust it to verify the domain).
INTERNAL_ROOT_CERT = f"{DATA_PATH}/caddy/pki/authorities/local/root.crt"


@dataclass(frozen=True)
class CaddyConfig:
    """What the rendered Caddyfile depends on (all from the stack settings)."""

    domain: str
    acme_email: str | None  # None: certificates from Caddy's internal CA (development and tests)
    https_port: int  # as published on the host: the redirect's target
    upstream: str  # host:port of the edge proxy on the private network


def render_caddyfile(config: CaddyConfig) -> str:
    """The whole Caddyfile for one host. Pure: the same settings always give the same text (no drift)."""
    issuer = f"\temail {config.acme_email}\n" if config.acme_email else "\tskip_install_trust\n"
    site_tls = "" if config.acme_email else "\ttls internal\n"
    https_origin = f"https://{config.domain}" + ("" if config.https_port == 443 else f":{config.https_port}")
    return f"""\
# Rendered by components/tls_front.py from the stack settings: edit the stack config, not this file.
{{
\tadmin off
\thttp_port {HTTP_LISTEN_PORT}
\thttps_port {HTTPS_LISTEN_PORT}
\t# The redirect below names the published HTTPS port; Caddy's own would name the one inside the container.
\tauto_https disable_redirects
{issuer}}}

{config.domain} {{
{site_tls}\treverse_proxy {config.upstream}
}}

http://{config.domain} {{
\tredir {https_origin}{{uri}} 308
}}

http://:{HEALTH_PORT} {{
\tbind 127.0.0.1
\trespond "ok" 200
}}
"""


@dataclass(frozen=True)
class TlsFrontArgs:
    """Inputs of `TlsFront`: its own settings, the edge proxy it fronts (name, limits), and the API container and
    healthcheck settings it follows (restart policy, stop grace, log rotation, probe timing)."""

    tls: TlsSettings
    proxy: ProxySettings
    container: ContainerSettings
    healthcheck: HealthcheckSettings
    production: bool  # ACME certificates in production, the internal CA otherwise
    upstream_port: int  # the edge proxy's port on the private network
    network_name: pulumi.Input[str]
    labels: dict[str, str]
    provider: docker.Provider | None = None


class TlsFront(pulumi.ComponentResource):
    """The Caddy container of one host, running the Caddyfile rendered from the settings, its certificates on a volume."""

    container_name: pulumi.Output[str]

    def __init__(self, name: str, args: TlsFrontArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("novita-gpu-api:index:TlsFront", name, None, opts)
        tls, proxy, c, hc = args.tls, args.proxy, args.container, args.healthcheck
        child = pulumi.ResourceOptions(parent=self, provider=args.provider)
        image: pulumi.Input[str] = tls.image
        if tls.pull_image:
            image = docker.RemoteImage(f"{name}-image", name=tls.image, keep_locally=True, opts=child).image_id
        volume = docker.Volume(f"{name}-data", name=tls.volume_name, opts=child)
        caddyfile = render_caddyfile(
            CaddyConfig(
                domain=tls.domain,
                acme_email=tls.acme_email if args.production else None,
                https_port=tls.https_port,
                upstream=f"{proxy.container_name}:{args.upstream_port}",
            )
        )
        container = docker.Container(
            f"{name}-container",
            name=tls.container_name,
            image=image,
            command=START_COMMAND,
            envs=[f"{CONFIG_ENV}={caddyfile}", f"XDG_DATA_HOME={DATA_PATH}", "XDG_CONFIG_HOME=/tmp/config"],
            volumes=[docker.ContainerVolumeArgs(volume_name=volume.name, container_path=DATA_PATH)],
            networks_advanced=[docker.ContainerNetworksAdvancedArgs(name=args.network_name)],
            ports=[
                docker.ContainerPortArgs(internal=HTTPS_LISTEN_PORT, external=tls.https_port, ip=tls.public_address),
                docker.ContainerPortArgs(internal=HTTP_LISTEN_PORT, external=tls.http_port, ip=tls.public_address),
            ],
            # SIGTERM is Caddy's graceful stop: in-flight requests finish.
            **edge_container_args(
                proxy=proxy, container=c, healthcheck=hc, probe=HEALTH_PROBE, stop_signal="SIGTERM", labels=args.labels
            ),
            opts=edge_container_options(self, args.provider),
        )
        self.container_name = container.name
        self.register_outputs({"container_name": self.container_name})
