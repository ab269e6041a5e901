"""The test of the tests: edit one value in a copy of a stack file and the mocks suite must fail, naming it.

The suite reads the stack files from $INFRA_STACK_FILES_DIR when set (tests/infra/harness.py), so a copy can be
edited the way a user would edit Pulumi.prod.yaml, and the suite is run on it in a subprocess. An unedited copy
must pass, so a failure can only come from the edit.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pulumi
import pytest
import yaml

from components.config import PROJECT
from tests.infra.harness import REPO_ROOT, STACK_FILES_DIR_ENV

THIS_FILE = Path(__file__).resolve()


def run_suite_on_edited_stack_files(
    tmp_path: Path, stack: str, key: str | None, value: str | None
) -> subprocess.CompletedProcess:
    for name in ("dev", "prod"):
        document = yaml.safe_load((REPO_ROOT / f"Pulumi.{name}.yaml").read_text())
        if name == stack and key is not None:
            document["config"][f"{PROJECT}:{key}"] = value
        (tmp_path / f"Pulumi.{name}.yaml").write_text(yaml.safe_dump(document))
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            str(THIS_FILE.parent),
            "-q",
            "-p",
            "no:cacheprovider",
            f"--ignore={THIS_FILE}",
            f"--confcutdir={THIS_FILE.parent}",
            # Reads no stack file of $INFRA_STACK_FILES_DIR (it copies the repository), and takes 10 s per run.
            "--deselect",
            "tests/infra/test_schema.py::test_a_copy_of_the_repository_with_nothing_beside_it_passes_the_schema_check",
        ],
        cwd=REPO_ROOT,
        env={**os.environ, STACK_FILES_DIR_ENV: str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=240,
    )


@pulumi.runtime.test
def test_unedited_copies_pass(tmp_path: Path) -> None:
    result = run_suite_on_edited_stack_files(tmp_path, "prod", None, None)
    assert result.returncode == 0, result.stdout[-3000:]


@pytest.mark.parametrize(
    "stack, key, value, named",
    [
        ("prod", "restartPolicy", "unless-stopped", "restartPolicy"),
        ("prod", "healthcheckStartPeriod", "90s", "test_healthcheck_every_field_in_canonical_form[prod]"),
        ("dev", "memoryMb", "1024", "test_limits_and_no_swap[dev]"),
        ("prod", "apiReplicas", "1", "test_replicas_publish_nothing_and_are_auto_named[prod]"),
    ],
)
@pulumi.runtime.test
def test_one_changed_value_fails_the_suite(tmp_path: Path, stack: str, key: str, value: str, named: str) -> None:
    result = run_suite_on_edited_stack_files(tmp_path, stack, key, value)
    assert result.returncode == 1, result.stdout[-3000:]
    assert named in result.stdout
