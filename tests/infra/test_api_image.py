"""The API image: built from app/ with the base image from config, pushed only when asked."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import pulumi
import pytest

from components.api_image import ApiImageArgs, build_tag
from components.config import ImageSettings, StackConfigError
from components.config.keys import KEYS
from components.config.load import nest
from tests.infra.harness import REPO_ROOT, ProgramRun

IMAGE = "docker:index/image:Image"


@pytest.mark.parametrize("stack, name", [("dev", "novita-gpu-api:dev"), ("prod", "novita-gpu-api:prod")])
@pulumi.runtime.test
async def test_built_locally_from_app_with_the_default_base_image(stack: str, name: str) -> None:
    run = await ProgramRun.for_stack(stack).run()
    image = run.one(IMAGE)
    tag = build_tag(
        REPO_ROOT / "app", REPO_ROOT / "app" / "Dockerfile", {"BASE_IMAGE": "python:3.11-slim"}, "linux/amd64"
    )
    assert re.fullmatch(r"[0-9a-f]{12}", tag)
    assert image.inputs == {
        "imageName": f"{name}-{tag}",  # a tag of its own per build, so no build overwrites another's
        "build": {
            "context": "app",
            "dockerfile": "app/Dockerfile",  # relative to the program's working directory, as the provider resolves it
            "args": {"BASE_IMAGE": "python:3.11-slim"},
            "platform": "linux/amd64",
        },
        "skipPush": True,
        "buildOnPreview": False,  # the SDK default: `pulumi preview` does not build
    }
    assert run.by_urn(image.parent).type == "novita-gpu-api:index:ApiImage"


@pulumi.runtime.test
async def test_base_image_and_platform_come_from_config() -> None:
    run = await ProgramRun.for_stack(
        "dev", {"baseImage": "mirror.local/python:3.11-slim", "imagePlatform": "linux/arm64"}
    ).run()
    build = run.one(IMAGE).inputs["build"]
    assert (build["args"], build["platform"]) == ({"BASE_IMAGE": "mirror.local/python:3.11-slim"}, "linux/arm64")


@pulumi.runtime.test
async def test_optional_registry_push_with_a_secret_password() -> None:
    run = await ProgramRun.for_stack(
        "prod",
        {
            "imagePush": "true",
            "registryServer": "registry.example.com",
            "registryUsername": "deploy",
            "imageName": "registry.example.com/novita-gpu-api:prod",
        },
        {"registryPassword": "test-registry-pass-19c4"},
    ).run()
    image = run.one(IMAGE)
    assert re.fullmatch(r"registry\.example\.com/novita-gpu-api:prod-[0-9a-f]{12}", image.inputs["imageName"])
    assert image.inputs["skipPush"] is False
    assert image.inputs["registry"] == {
        "server": "registry.example.com",
        "username": "deploy",
        "password": "test-registry-pass-19c4",
    }
    assert image.is_secret("registry.password")


@pulumi.runtime.test
async def test_push_needs_the_image_name_under_the_registry() -> None:
    run = ProgramRun.for_stack("prod", {"imagePush": "true", "registryServer": "registry.example.com"})
    with pytest.raises(StackConfigError, match=re.escape("imageName: must start with 'registry.example.com/'")):
        await run.run()


@pulumi.runtime.test
def test_refuses_to_build_outside_the_project_directory_or_without_a_dockerignore(tmp_path: Path) -> None:
    settings = ImageSettings.model_validate(nest(ImageSettings, {key: spec.default for key, spec in KEYS.items()}))
    with contextlib.chdir(tmp_path), pytest.raises(ValueError, match="app/Dockerfile not found"):
        ApiImageArgs(image=settings)
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "Dockerfile").write_text("FROM scratch\n")
    with contextlib.chdir(tmp_path), pytest.raises(ValueError, match=r"app/\.dockerignore is missing"):
        ApiImageArgs(image=settings)
