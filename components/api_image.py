"""The API image, built from `app/` by the Docker daemon under a tag of its own per build, or an earlier build
pinned for a rollback (`apiImage`)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import pulumi
import pulumi_docker as docker

from components.config import ImageSettings
from components.config.types import secret_output

# Relative to the program's working directory (the project directory under `pulumi up`): the provider resolves
# an explicit `dockerfile` from there, not from the context, and relative paths keep the state machine-neutral.
CONTEXT = "app"
DOCKERFILE = "app/Dockerfile"
BUILD_TAG_LENGTH = 12


def _dockerignore_pattern(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex over a slash-separated relative path (`**` spans directories)."""
    parts = []
    for token in re.split(r"(\*\*/|\*\*|\*|\?)", pattern.strip().strip("/")):
        parts.append({"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(token, re.escape(token)))
    return re.compile("".join(parts))


def _ignored(relative: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern matching the path, or one of its parent directories, decides."""
    prefixes = [relative[:index] for index, char in enumerate(relative) if char == "/"] + [relative]
    ignored = False
    for negated, pattern in rules:
        if any(pattern.fullmatch(prefix) for prefix in prefixes):
            ignored = not negated
    return ignored


def build_tag(context: Path, dockerfile: Path, build_args: dict[str, str], platform: str) -> str:
    """The content digest of one build: every file Docker is sent (after .dockerignore), the Dockerfile, the build
    args and the platform. The same sources give the same tag; any change gives a new one, so no build overwrites
    another's tag and every earlier image stays available for a rollback."""
    ignore_file = context / ".dockerignore"
    rules = []
    for line in ignore_file.read_text().splitlines() if ignore_file.is_file() else []:
        line = line.strip()
        if line and not line.startswith("#"):
            rules.append((line.startswith("!"), _dockerignore_pattern(line.lstrip("!"))))
    digest = hashlib.sha256()
    for path in sorted(p for p in context.rglob("*") if p.is_file()):
        relative = path.relative_to(context).as_posix()
        if not _ignored(relative, rules):
            digest.update(f"{relative}\0{len(path.read_bytes())}\0".encode() + path.read_bytes())
    digest.update(b"\0dockerfile\0" + dockerfile.read_bytes())
    digest.update(repr((sorted(build_args.items()), platform)).encode())
    return digest.hexdigest()[:BUILD_TAG_LENGTH]


def tagged_name(image_name: str, tag: str) -> str:
    """`novita-gpu-api:prod` and a build tag -> `novita-gpu-api:prod-<tag>`; an untagged name gets `<tag>`."""
    repository, separator, base = image_name.rpartition(":")
    if separator and "/" not in base:
        return f"{repository}:{base}-{tag}"
    return f"{image_name}:{tag}"


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
    """Builds `app/` with `BASE_IMAGE` from config as `<imageName>-<content digest>`, or takes the pinned `apiImage`;
    `image_id` changes with every different image, so the container rolls."""

    image_id: pulumi.Output[str]
    image_name: pulumi.Output[str]

    def __init__(self, name: str, args: ApiImageArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("novita-gpu-api:index:ApiImage", name, None, opts)
        settings = args.image
        if settings.pinned:
            # A rollback: an earlier build, still in the engine under its own tag (or pulled from the registry).
            # keep_locally: destroying or replacing this resource never deletes the image.
            pinned = docker.RemoteImage(
                f"{name}-pinned", name=settings.pinned, keep_locally=True, opts=pulumi.ResourceOptions(parent=self)
            )
            self.image_id = pinned.image_id
            self.image_name = pinned.name
            self.register_outputs({"image_id": self.image_id, "image_name": self.image_name})
            return
        build_args = {"BASE_IMAGE": settings.base_image}
        registry = None
        if settings.push:
            registry = docker.RegistryArgs(
                server=settings.registry_server,
                username=settings.registry_username or None,
                password=secret_output(settings.registry_password) if settings.registry_password else None,
            )
        image = docker.Image(
            f"{name}-build",
            image_name=tagged_name(
                settings.name, build_tag(Path(CONTEXT), Path(DOCKERFILE), build_args, settings.platform)
            ),
            build=docker.DockerBuildArgs(
                context=CONTEXT,
                dockerfile=DOCKERFILE,
                args=build_args,
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
