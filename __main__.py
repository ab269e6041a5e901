"""novita-gpu-api: stack config -> StackSettings -> Valkey, then per Docker host: API image, replicas, edge proxy."""
import pulumi
import pulumi_docker as docker

from components.api_image import ApiImage, ApiImageArgs
from components.api_service import CONTAINER_PORT, ApiService, ApiServiceArgs
from components.edge_proxy import EdgeProxy, EdgeProxyArgs
from components.settings import StackSettings
from components.valkey import Valkey, ValkeyArgs

settings = StackSettings.from_config()  # raises StackConfigError before any resource exists
edge = settings.edge
stack = pulumi.get_stack()


def labels(role: str) -> dict[str, str]:
    """Every container carries its role and stack (the policy pack and `make status-prod` select on them)."""
    return {"novita-gpu-api.role": role, "novita-gpu-api.stack": stack}


def host_suffix(number: int) -> str:
    """Resource-name suffix of the n-th Docker host: none for the first, so a one-host stack keeps its names."""
    return "" if number == 1 else f"-h{number}"


# One Docker provider per configured host; none configured: the default provider (the local engine).
providers: list = [None]
if edge.docker_hosts:
    tls = edge.docker_tls
    providers = [
        docker.Provider(
            f"docker{host_suffix(number)}",
            host=url,
            ca_material=tls.ca if tls and url.startswith("tcp://") else None,
            cert_material=tls.cert if tls and url.startswith("tcp://") else None,
            key_material=tls.key if tls and url.startswith("tcp://") else None,
        )
        for number, url in enumerate(edge.docker_hosts, start=1)
    ]


def private_network(number: int, provider) -> pulumi.Output[str]:
    """The private network of one host, shared by its replicas, its proxy and (first host) the local Valkey."""
    return docker.Network(
        f"network{host_suffix(number)}", name=settings.network_name, opts=pulumi.ResourceOptions(provider=provider)
    ).name


first_network = None if settings.uses_host_network else private_network(1, providers[0])
valkey = Valkey("valkey", ValkeyArgs(
    mode=settings.valkey_mode,
    local=settings.local_valkey,
    aiven=settings.aiven_valkey,
    production=settings.is_production,
    aiven_token=settings.secrets.aiven_token,
    network_name=first_network,
    labels=labels("valkey"),
), opts=pulumi.ResourceOptions(provider=providers[0]))

container_names: list[pulumi.Output[list[str]]] = []
proxy_names: list[pulumi.Output[str]] = []
previous_host_last_replica = None
image = None
api = None
for number, provider in enumerate(providers, start=1):
    suffix = host_suffix(number)
    network_name = first_network if number == 1 else private_network(number, provider)
    # Each engine builds its own copy of the image (without a registry, a host has only what it built).
    host_image = ApiImage(
        f"api-image{suffix}", ApiImageArgs(image=settings.image, registry_password=settings.secrets.registry_password),
        opts=pulumi.ResourceOptions(provider=provider),
    )
    host_api = ApiService(f"api{suffix}", ApiServiceArgs(
        settings=settings, image_id=host_image.image_id, valkey_url=valkey.url, network_name=network_name,
        labels=labels("api"), provider=provider, replica_name_prefix=f"{settings.container_name}{suffix}",
        after=previous_host_last_replica,
    ))
    previous_host_last_replica = host_api.last_replica
    container_names.append(host_api.container_names)
    if not settings.uses_host_network:
        proxy = EdgeProxy(f"proxy{suffix}", EdgeProxyArgs(
            edge=edge, healthcheck=settings.healthcheck, restart_policy=settings.restart_policy,
            stop_grace_seconds=settings.stop_grace_seconds, log_max_size=settings.log_max_size,
            log_max_file=settings.log_max_file, api_port=CONTAINER_PORT, published_port=settings.api_port,
            published_address=settings.api_host_address, network_name=network_name, labels=labels("proxy"),
            container_name=settings.edge.proxy_container_name, provider=provider,
        ))
        proxy_names.append(proxy.container_name)
    image = image or host_image
    api = api or host_api

pulumi.export("apiUrl", api.api_url)  # the proxy's published address on each host (the API's own in host mode)
pulumi.export("healthUrl", api.health_url)
pulumi.export("containerNames", pulumi.Output.all(*container_names).apply(lambda hosts: [n for host in hosts for n in host]))
pulumi.export("proxyContainerNames", pulumi.Output.all(*proxy_names))
pulumi.export("apiReplicas", edge.api_replicas)
pulumi.export("dockerHosts", list(edge.docker_hosts) or ["local"])
pulumi.export("imageId", image.image_id)
pulumi.export("restartPolicy", settings.restart_policy)
pulumi.export("healthcheck", settings.healthcheck.summary())
pulumi.export("valkeyHost", valkey.host)
pulumi.export("valkeyPort", valkey.port)
pulumi.export("valkeyTls", valkey.tls)
pulumi.export("valkeyUrl", valkey.url)  # a secret: `pulumi stack output valkeyUrl --show-secrets`
