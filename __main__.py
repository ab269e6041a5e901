"""novita-gpu-api: stack config -> StackSettings -> Valkey, then per Docker host: API image, replicas, edge proxy."""

import pulumi
import pulumi_docker as docker

from components.api_image import ApiImage, ApiImageArgs
from components.api_service import CONTAINER_PORT, ApiService, ApiServiceArgs
from components.config import load_settings
from components.config.types import secret_output
from components.edge_proxy import EdgeProxy, EdgeProxyArgs
from components.tls_front import TlsFront, TlsFrontArgs
from components.valkey import Valkey, ValkeyArgs

settings = load_settings()  # raises StackConfigError before any resource exists
container, hosts = settings.container, settings.hosts
stack = pulumi.get_stack()


def labels(role: str) -> dict[str, str]:
    """Every container carries its role and stack (the policy pack and `make status-prod` select on them)."""
    return {"novita-gpu-api.role": role, "novita-gpu-api.stack": stack}


def host_suffix(number: int) -> str:
    """Resource-name suffix of the n-th Docker host: none for the first, so a one-host stack keeps its names."""
    return "" if number == 1 else f"-h{number}"


def provider_for(number: int, url: str) -> docker.Provider:
    """The Docker provider of one host; tcp:// hosts get the TLS client material, as secrets."""
    name = f"docker{host_suffix(number)}"
    if not hosts.uses_tls(url):
        return docker.Provider(name, host=url)
    ca, cert, key = hosts.tls_ca, hosts.tls_cert, hosts.tls_key
    assert ca and cert and key  # DockerHostSettings refuses a tcp:// host without them
    return docker.Provider(
        name,
        host=url,
        ca_material=secret_output(ca),
        cert_material=secret_output(cert),
        key_material=secret_output(key),
    )


def private_network(number: int, provider: docker.Provider | None) -> pulumi.Output[str] | None:
    """The private network of one host, shared by its replicas, its proxy and (first host) the local Valkey."""
    if container.uses_host_network:
        return None
    opts = pulumi.ResourceOptions(provider=provider)
    return docker.Network(f"network{host_suffix(number)}", name=container.network_name, opts=opts).name


# One Docker provider per configured host; none configured: the default provider (the local engine).
providers: list[docker.Provider | None] = [
    provider_for(number, url) for number, url in enumerate(hosts.urls, start=1)
] or [None]
networks = [private_network(number, provider) for number, provider in enumerate(providers, start=1)]
valkey = Valkey(
    "valkey",
    ValkeyArgs(
        target=settings.valkey.target,
        production=settings.is_production,
        network_name=networks[0],
        labels=labels("valkey"),
    ),
    opts=pulumi.ResourceOptions(provider=providers[0]),
)

images: list[ApiImage] = []
apis: list[ApiService] = []
proxies: list[EdgeProxy] = []
for number, (provider, network_name) in enumerate(zip(providers, networks, strict=True), start=1):
    suffix = host_suffix(number)
    # Each engine builds its own copy of the image (without a registry, a host has only what it built).
    on_host = pulumi.ResourceOptions(provider=provider)
    images.append(ApiImage(f"api-image{suffix}", ApiImageArgs(image=settings.image), opts=on_host))
    apis.append(
        ApiService(
            f"api{suffix}",
            ApiServiceArgs(
                service=settings.service,
                jobs=settings.jobs,
                lifecycle=settings.lifecycle,
                webhooks=settings.webhooks,
                container=container,
                healthcheck=settings.healthcheck,
                hardening=settings.hardening,
                image_id=images[-1].image_id,
                valkey_url=valkey.url,
                network_name=network_name,
                labels=labels("api"),
                provider=provider,
                replica_name_prefix=f"{container.name}{suffix}",
                after=apis[-1].last_replica if apis else None,  # hosts roll one after another
            ),
        )
    )
    if network_name is not None:
        proxies.append(
            EdgeProxy(
                f"proxy{suffix}",
                EdgeProxyArgs(
                    proxy=settings.proxy,
                    container=container,
                    healthcheck=settings.healthcheck,
                    api_port=CONTAINER_PORT,
                    network_name=network_name,
                    labels=labels("proxy"),
                    provider=provider,
                ),
            )
        )
    if network_name is not None and settings.tls.enabled:
        TlsFront(
            f"tls{suffix}",
            TlsFrontArgs(
                tls=settings.tls,
                proxy=settings.proxy,
                container=container,
                healthcheck=settings.healthcheck,
                production=settings.is_production,
                upstream_port=CONTAINER_PORT,
                network_name=network_name,
                labels=labels("tls"),
                provider=provider,
            ),
        )

api, image = apis[0], images[0]
pulumi.export("apiUrl", api.api_url)  # the proxy's published address on each host (the API's own in host mode)
pulumi.export("healthUrl", api.health_url)
pulumi.export("httpsUrl", settings.tls.https_url)  # the domain's HTTPS address; "" without a domain
every_replica = pulumi.Output.all(*[host_api.container_names for host_api in apis])
pulumi.export("containerNames", every_replica.apply(lambda per_host: [name for names in per_host for name in names]))
pulumi.export("proxyContainerNames", pulumi.Output.all(*[proxy.container_name for proxy in proxies]))
pulumi.export("apiReplicas", container.replicas)
pulumi.export("dockerHosts", list(hosts.urls) or ["local"])
pulumi.export("imageId", image.image_id)
pulumi.export("imageName", image.image_name)  # this build's own tag: scripts/rollback.py starts from it
pulumi.export("restartPolicy", container.restart_policy)
pulumi.export("healthcheck", settings.healthcheck.summary())
pulumi.export("valkeyHost", valkey.host)
pulumi.export("valkeyPort", valkey.port)
pulumi.export("valkeyTls", valkey.tls)
pulumi.export("valkeyUrl", valkey.url)  # a secret: `pulumi stack output valkeyUrl --show-secrets`
