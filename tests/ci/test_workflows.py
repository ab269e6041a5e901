"""The users' GitHub Actions workflow: actionlint passes on every workflow file, and the deploy workflow does what
the README says (preview + PR comment on pull requests, approved `up` of prod on main, policy pack on both,
`make verify` after `up`, actions pinned to a release)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.ci.conftest import REPO_ROOT

WORKFLOWS_DIR = REPO_ROOT / ".github" / "workflows"
ACTIONLINT_CONFIG = REPO_ROOT / ".github" / "actionlint.yaml"
DEPLOY = WORKFLOWS_DIR / "deploy.yml"
# owner/repo@vMAJOR.MINOR.PATCH or a full commit SHA: never a moving branch or a major-only tag.
PINNED = re.compile(r"^[\w.-]+/[\w.-]+(/[\w./-]+)?@(v\d+\.\d+\.\d+|[0-9a-f]{40})$")


def workflow_files() -> list[Path]:
    return sorted([*WORKFLOWS_DIR.glob("*.yml"), *WORKFLOWS_DIR.glob("*.yaml")])


def lint(actionlint: Path, *files: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(actionlint), "-no-color", "-config-file", str(ACTIONLINT_CONFIG), *map(str, files)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_actionlint_passes_every_workflow(actionlint: Path) -> None:
    files = workflow_files()
    assert DEPLOY in files
    result = lint(actionlint, *files)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("before", "after", "finding"),
    [
        ("runs-on: [self-hosted, linux, novita-gpu-api-prod]", "runs-on: [self-hosted, linux, prod-box]", "prod-box"),
        ("if: github.event_name == 'push'", "if: github.event_nam == 'push'", "event_nam"),
        ("environment: production", "environment: {}", "environment"),
    ],
)
def test_actionlint_catches_a_broken_copy(
    actionlint: Path, tmp_path: Path, before: str, after: str, finding: str
) -> None:
    text = DEPLOY.read_text()
    assert before in text
    broken = tmp_path / ".github" / "workflows" / "deploy.yml"
    broken.parent.mkdir(parents=True)
    broken.write_text(text.replace(before, after, 1))
    result = lint(actionlint, broken)
    assert result.returncode == 1 and finding in result.stdout, result.stdout + result.stderr


def deploy_workflow() -> dict:
    document = yaml.safe_load(DEPLOY.read_text())
    document["on"] = document.pop(True)  # YAML 1.1 reads the key `on` as true
    return document


def step_using(job: dict, action: str) -> dict:
    [step] = [s for s in job["steps"] if s.get("uses", "").startswith(f"{action}@")]
    return step


def test_pull_requests_get_a_preview_of_prod_with_the_policy_pack_and_a_comment() -> None:
    workflow = deploy_workflow()
    assert "pull_request" in workflow["on"]
    job = workflow["jobs"]["preview"]
    assert "github.event_name == 'pull_request'" in job["if"]
    assert job["permissions"]["pull-requests"] == "write"
    inputs = step_using(job, "pulumi/actions")["with"]
    assert (inputs["command"], inputs["stack-name"], inputs["policyPacks"]) == ("preview", "prod", "policy")
    assert inputs["comment-on-pr"] is True
    assert "environment" not in job


def test_main_deploys_prod_after_approval_with_the_policy_pack_then_verifies() -> None:
    workflow = deploy_workflow()
    assert workflow["on"]["push"]["branches"] == ["main"]
    job = workflow["jobs"]["deploy"]
    assert job["environment"] == "production"
    assert "github.ref == 'refs/heads/main'" in job["if"]
    steps = job["steps"]
    up = step_using(job, "pulumi/actions")
    assert (up["with"]["command"], up["with"]["stack-name"], up["with"]["policyPacks"]) == ("up", "prod", "policy")
    verify = [i for i, s in enumerate(steps) if s.get("run", "").startswith("make verify STACK=prod")]
    assert verify and verify[0] > steps.index(up)


def test_every_action_is_pinned_to_a_release() -> None:
    for path in workflow_files():
        for job in yaml.safe_load(path.read_text())["jobs"].values():
            for step in job.get("steps", []):
                if "uses" in step:
                    assert PINNED.match(step["uses"]), f"{path.name}: {step['uses']} is not pinned to vX.Y.Z or a SHA"


def test_the_policy_pack_and_cli_versions_match_the_repository() -> None:
    workflow = deploy_workflow()
    pinned = re.search(r"^pulumi==(\S+)$", (REPO_ROOT / "requirements.txt").read_text(), re.MULTILINE)
    assert pinned, "requirements.txt pins no pulumi"
    pinned_sdk = pinned.group(1)
    for job in workflow["jobs"].values():
        # The CLI the action installs is the release of the SDK the program pins.
        assert step_using(job, "pulumi/actions")["with"]["pulumi-version"] == pinned_sdk
        assert any(s.get("run") == "make venv" for s in job["steps"])  # .venv is the pack's runtime too
    assert (REPO_ROOT / "policy" / "PulumiPolicy.yaml").is_file()
