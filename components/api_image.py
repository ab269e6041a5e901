"""The API image, built from `app/` by the Docker daemon."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pulumi
import pulumi_docker as docker

from components.config import ImageSettings
from components.config.types import secret_output

# Relative to the program's working directory (the project directory under `pulumi up`): the provider resolves
# an explicit `dockerfile` from there, not from the context, and relative paths keep the state machine-neutral.
CONTEXT = "app"
DOCKERFILE = "app/Dockerfile"


@dataclass(frozen=True)
class ApiImageArgs:
    """Inputs of `ApiImage`."""

    image: ImageSettings

    def __post_init__(self) -> None:
        if not Path(DOCKERFILE).is_file():
            raise ValueError(
                f"ApiImage: {DOCKERFILE} not found from {Path.cwd()}; run pulumi from the project directory"
            )
        if not Path(CONTEXT, ".dockerignore").is_file():
            # Without it, __pycache__ and the like change the context hash and rebuild the image on every up.
            raise ValueError(f"ApiImage: {CONTEXT}/.dockerignore is missing")


class ApiImage(pulumi.ComponentResource):
    """Builds `app/` with `BASE_IMAGE` from config; `image_id` changes on every rebuild, so the container rolls."""

    image_id: pulumi.Output[str]
    image_name: pulumi.Output[str]

    def __init__(self, name: str, args: ApiImageArgs, opts: Optional[pulumi.ResourceOptions] = None) -> None:
        super().__init__("novita-gpu-api:index:ApiImage", name, None, opts)
        settings = args.image
        registry = None
        if settings.push:
            registry = docker.RegistryArgs(
                server=settings.registry_server,
                username=settings.registry_username or None,
                password=secret_output(settings.registry_password) if settings.registry_password else None,
            )
        image = docker.Image(
            f"{name}-build",
            image_name=settings.name,
            build=docker.DockerBuildArgs(
                context=CONTEXT,
                dockerfile=DOCKERFILE,
                args={"BASE_IMAGE": settings.base_image},
                platform=settings.platform,
            ),
            skip_push=not settings.push,
            registry=registry,
            opts=pulumi.ResourceOptions(parent=self),
        )
        # Unpushed: the local image ID (sha256:...). Pushed: name@digest. Either way a new build is a new value,
        # which replaces the container; a tag would leave the old image running (pulumi/pulumi#5515).
        self.image_id = image.repo_digest
        self.image_name = image.image_name
        self.register_outputs({"image_id": self.image_id, "image_name": self.image_name})
