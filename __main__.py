"""novita-gpu-api: stack config -> StackSettings -> Valkey, API image, API container -> stack outputs."""
import pulumi
import pulumi_docker as docker

from components.api_image import ApiImage, ApiImageArgs
from components.api_service import ApiService, ApiServiceArgs
from components.config import load_settings
from components.valkey import Valkey, ValkeyArgs

settings = load_settings()  # raises StackConfigError before any resource exists

# The private network shared by the API and the local Valkey (none on the host network).
network_name = None
if not settings.container.uses_host_network:
    network_name = docker.Network("network", name=settings.container.network_name).name

valkey = Valkey("valkey", ValkeyArgs(
    target=settings.valkey.target, production=settings.is_production, network_name=network_name,
))
image = ApiImage("api-image", ApiImageArgs(image=settings.image))
api = ApiService("api", ApiServiceArgs(
    service=settings.service,
    jobs=settings.jobs,
    lifecycle=settings.lifecycle,
    webhooks=settings.webhooks,
    container=settings.container,
    healthcheck=settings.healthcheck,
    hardening=settings.hardening,
    image_id=image.image_id,
    valkey_url=valkey.url,
    network_name=network_name,
))

pulumi.export("apiUrl", api.api_url)
pulumi.export("healthUrl", api.health_url)
pulumi.export("containerName", api.container_name)
pulumi.export("imageId", image.image_id)
pulumi.export("imageName", image.image_name)  # this build's own tag: scripts/rollback.py starts from it
pulumi.export("restartPolicy", settings.container.restart_policy)
pulumi.export("healthcheck", settings.healthcheck.summary())
pulumi.export("valkeyHost", valkey.host)
pulumi.export("valkeyPort", valkey.port)
pulumi.export("valkeyTls", valkey.tls)
pulumi.export("valkeyUrl", valkey.url)  # a secret: `pulumi stack output valkeyUrl --show-secrets`
