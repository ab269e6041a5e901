"""Mocks-suite plumbing: every test here must be a `@pulumi.runtime.test`, and the provider schemas must exist."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import pulumi
import pytest

from tests.infra.harness import REPO_ROOT

# Every wrapper made by @pulumi.runtime.test shares this code object.
_PULUMI_TEST_CODE = pulumi.runtime.test(lambda: None).__code__
SCHEMAS_DIR_ENV = "PULUMI_SCHEMAS_DIR"
DEFAULT_SCHEMAS_DIR = REPO_ROOT.parent / "shared" / "reference" / "schemas"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Refuse undecorated tests: without @pulumi.runtime.test an assertion inside an apply never runs."""
    here = Path(__file__).parent
    for item in items:
        function = getattr(item, "function", None)
        if function is None or here not in item.path.parents:
            continue
        if getattr(function, "__code__", None) is not _PULUMI_TEST_CODE:
            raise pytest.UsageError(f"{item.nodeid} is not decorated with @pulumi.runtime.test")


@pytest.fixture(scope="session")
def schemas_dir() -> Path:
    """The providers' schemas (not copied into the repo): $PULUMI_SCHEMAS_DIR or ../shared/reference/schemas."""
    path = Path(os.environ.get(SCHEMAS_DIR_ENV) or DEFAULT_SCHEMAS_DIR)
    if not (path / "docker.schema.json").is_file() or not (path / "aiven-valkey.schema.json").is_file():
        pytest.fail(
            f"provider schemas not found in {path}: set {SCHEMAS_DIR_ENV} to the directory holding "
            "docker.schema.json and aiven-valkey.schema.json",
            pytrace=False,
        )
    return path


def pytest_unconfigure() -> None:
    """Each mocks run leaves Pulumi's `register_resource_outputs` RPC tasks pending on its finished event loop; at exit
    asyncio would log "Task was destroyed but it is pending!" for each, after pytest's summary. They hold nothing."""
    logging.getLogger("asyncio").disabled = True
