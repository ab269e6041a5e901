"""No secret in the built image (layers, history, config), nor in what the running container logs or answers.

The container gets the test secrets the way `pulumi up` hands them over (secret env vars); only those env vars may
hold them.
"""

from __future__ import annotations

import tarfile
import tempfile
from pathlib import PurePosixPath

import docker
import pytest

from tests.e2e.harness import http, wait_for
from tests.infra.harness import TEST_SECRETS

pytestmark = pytest.mark.e2e

SECRET_VALUES = [TEST_SECRETS["novitaApiKey"], TEST_SECRETS["apiKeys"].split(":", 1)[1], TEST_SECRETS["aivenToken"]]
SECRET_ENV_VARS = {"NOVITA_API_KEY", "API_KEYS", "REDIS_URL"}
# Files that must never reach the app's directory in the image (the build context is app/ and .dockerignore).
FORBIDDEN_NAMES = (".env", "Pulumi.", ".pulumi", "tests", ".venv", ".git")
FORBIDDEN_SUFFIXES = (".pem", ".key")


def _found_secrets(data: bytes) -> list[str]:
    return [value for value in SECRET_VALUES if value.encode() in data]


def test_the_built_image_holds_no_secret_and_no_stray_file(docker_client: docker.DockerClient, api_image: str):
    image = docker_client.images.get(api_image)
    assert _found_secrets(str(image.attrs["Config"]).encode()) == []
    assert _found_secrets(str(image.history()).encode()) == []

    leaks, stray, seen = [], [], set()
    with tempfile.TemporaryFile() as saved:
        for chunk in image.save(named=True):
            saved.write(chunk)
        saved.seek(0)
        with tarfile.open(fileobj=saved) as outer:
            for layer in (member for member in outer if member.name.endswith("layer.tar")):
                with tarfile.open(fileobj=outer.extractfile(layer)) as files:
                    for entry in files:
                        path = PurePosixPath("/", entry.name)
                        seen.add(str(path))
                        if path.is_relative_to("/srv/app") and (
                            any(part.startswith(FORBIDDEN_NAMES) for part in path.parts)
                            or path.name.endswith(FORBIDDEN_SUFFIXES)
                        ):
                            stray.append(str(path))
                        content = files.extractfile(entry) if entry.isfile() else None
                        if content is not None and (found := _found_secrets(content.read())):
                            leaks.append(f"{path}: {found}")
    assert "/srv/app/main.py" in seen  # the scan really went through the app's layer
    assert leaks == []
    assert stray == []


def test_the_running_container_keeps_its_secrets_in_its_env_only(deploy):
    api = deploy("prod").api
    assert http("GET", f"{api.api_url}/api/products", headers={"X-API-Key": "wrong-key"})[0] == 401
    status, accepted = api.post(
        "/api/instances",
        {
            "name": "secretive",
            "productId": "4090-us-ca-6",
            "gpuNum": 1,
            "rootfsSize": 60,
            "imageUrl": "docker.io/library/ubuntu:22.04",
        },
    )
    assert status == 202, accepted
    wait_for(
        "the create job to finish",
        lambda: api.get(f"/api/jobs/{accepted['jobId']}")[1].get("state") in ("succeeded", "failed"),
        60,
    )
    answers = [
        api.get(path) for path in ("/health", "/readyz", "/metrics", f"/api/instances/{accepted['instance']['id']}")
    ]

    assert _found_secrets(str(answers).encode()) == []
    assert _found_secrets(api.logs().encode()) == []
    env = api.inspect()["Config"]["Env"]
    holders = {entry.split("=", 1)[0] for entry in env if _found_secrets(entry.encode())}
    assert holders <= SECRET_ENV_VARS and "NOVITA_API_KEY" in holders
