"""Mocks-suite plumbing: every test here must be a `@pulumi.runtime.test`, and the provider schemas must exist."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pulumi
import pytest

from tests.infra.schema import SCHEMA_FILES

# Every wrapper made by @pulumi.runtime.test shares this code object.
_PULUMI_TEST_CODE = pulumi.runtime.test(lambda: None).__code__
SCHEMAS_DIR_ENV = "PULUMI_SCHEMAS_DIR"
# In the repository, so a clone anywhere runs the check (scripts/extract_provider_schemas.py regenerates it).
DEFAULT_SCHEMAS_DIR = Path(__file__).parent / "schemas"


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
    """The providers' schemas: tests/infra/schemas (extracts kept in the repo), or $PULUMI_SCHEMAS_DIR to check
    against other ones (e.g. full `pulumi package get-schema` output). Missing files fail the suite, never skip it."""
    path = Path(os.environ.get(SCHEMAS_DIR_ENV) or DEFAULT_SCHEMAS_DIR)
    missing = [name for name in SCHEMA_FILES if not (path / name).is_file()]
    if missing:
        pytest.fail(
            f"provider schemas not found in {path}: {', '.join(missing)} (set {SCHEMAS_DIR_ENV} to the directory "
            "holding them, or regenerate them with scripts/extract_provider_schemas.py)",
            pytrace=False,
        )
    return path


def pytest_unconfigure() -> None:
    """Each mocks run leaves Pulumi's `register_resource_outputs` RPC tasks pending on its finished event loop; at exit
    asyncio would log "Task was destroyed but it is pending!" for each, after pytest's summary. They hold nothing."""
    logging.getLogger("asyncio").disabled = True
