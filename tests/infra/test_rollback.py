"""Rollback: every build keeps its own tag, `apiImage` redeploys an earlier one (pinned by ID), and
scripts/rollback.py picks the previous build and prunes old ones (its Docker and Pulumi CLIs faked on PATH)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pulumi
import pytest

from components.api_image import build_tag, tagged_name
from scripts.rollback import Build, RollbackError, builds_of, builds_to_prune, previous_build, split_build_ref
from tests.infra.harness import REPO_ROOT, ProgramRun
from tests.infra.test_api_service import api_container

SCRIPT = REPO_ROOT / "scripts" / "rollback.py"
IMAGE = "docker:index/image:Image"
REMOTE_IMAGE = "docker:index/remoteImage:RemoteImage"
# Three prod builds, oldest first, plus a dev build and an unrelated tag that must be ignored.
A, B, C = (f"novita-gpu-api:prod-{digest}" for digest in ("aaaaaaaaaaaa", "bbbbbbbbbbbb", "cccccccccccc"))
INSPECTED = [
    {"Id": "sha256:c1", "RepoTags": [C], "Created": "2026-12-02T10:00:00.5Z"},
    {"Id": "sha256:a1", "RepoTags": [A], "Created": "2026-12-01T10:00:00Z"},
    {"Id": "sha256:b1", "RepoTags": [B, "novita-gpu-api:prod"], "Created": "2026-12-02T10:00:00.123456789Z"},
    {"Id": "sha256:d1", "RepoTags": ["novita-gpu-api:dev-dddddddddddd"], "Created": "2026-12-03T10:00:00Z"},
]


# ---- the program ---------------------------------------------------------------------------------------------


@pulumi.runtime.test
async def test_a_pinned_earlier_build_is_deployed_by_id_without_building() -> None:
    run = await ProgramRun.for_stack("prod", {"apiImage": B}).run()
    assert run.all(IMAGE) == []
    pinned = run.one(REMOTE_IMAGE, "api-image-pinned")
    assert pinned.inputs == {"name": B, "keepLocally": True}  # destroying it never deletes the image
    assert run.by_urn(pinned.parent).type == "novita-gpu-api:index:ApiImage"
    image_id = run.outputs["imageId"].value
    assert image_id.startswith("sha256:") and api_container(run).inputs["image"] == image_id
    assert run.outputs["imageName"].value == B


@pulumi.runtime.test
async def test_without_a_pin_the_stack_builds_and_reports_the_build_tag() -> None:
    run = await ProgramRun.for_stack("prod").run()
    assert [pulled.name for pulled in run.all(REMOTE_IMAGE)] == ["proxy-image"]  # the edge proxy's, not the API's
    name = run.one(IMAGE).inputs["imageName"]
    assert re.fullmatch(r"novita-gpu-api:prod-[0-9a-f]{12}", name) and run.outputs["imageName"].value == name


@pulumi.runtime.test
async def test_a_bad_pin_is_refused_naming_the_key() -> None:
    from components.config import StackConfigError

    with pytest.raises(
        StackConfigError, match=r"novita-gpu-api:apiImage: 'Novita GPU' is not allowed; expected an image tag"
    ):
        await ProgramRun.for_stack("prod", {"apiImage": "Novita GPU"}).run()


def _context(root: Path) -> Path:
    shutil.copytree(REPO_ROOT / "app", root / "app", ignore=shutil.ignore_patterns("__pycache__"))
    return root / "app"


@pulumi.runtime.test
def test_the_build_tag_follows_what_docker_is_sent(tmp_path: Path) -> None:
    context = _context(tmp_path)
    args = {"BASE_IMAGE": "python:3.11-slim"}

    def tag() -> str:
        return build_tag(context, context / "Dockerfile", args, "linux/amd64")

    first = tag()
    assert tag() == first
    (context / "core" / "__pycache__").mkdir(exist_ok=True)
    (context / "core" / "__pycache__" / "config.cpython-311.pyc").write_bytes(b"\0")
    (context / "tests").mkdir()
    (context / "tests" / "test_x.py").write_text("x = 1\n")
    assert tag() == first  # .dockerignore'd files are not sent, so they do not make a new build
    (context / "core" / "config.py").write_text((context / "core" / "config.py").read_text() + "\n# changed\n")
    second = tag()
    assert second != first
    assert (
        build_tag(context, context / "Dockerfile", {"BASE_IMAGE": "mirror/python:3.11-slim"}, "linux/amd64") != second
    )
    assert build_tag(context, context / "Dockerfile", args, "linux/arm64") != second
    (context / "Dockerfile").write_text((context / "Dockerfile").read_text() + "\n# changed\n")
    assert tag() != second


@pulumi.runtime.test
def test_a_negated_dockerignore_pattern_brings_a_file_back(tmp_path: Path) -> None:
    context = tmp_path / "ctx"
    (context / "docs").mkdir(parents=True)
    (context / "Dockerfile").write_text("FROM scratch\n")
    (context / "docs" / "keep.md").write_text("a")
    (context / ".dockerignore").write_text("docs\n!docs/keep.md\n")
    before = build_tag(context, context / "Dockerfile", {}, "linux/amd64")
    (context / "docs" / "keep.md").write_text("b")
    assert build_tag(context, context / "Dockerfile", {}, "linux/amd64") != before


@pulumi.runtime.test
def test_build_names() -> None:
    assert tagged_name("novita-gpu-api:prod", "3f9a1c2b7d10") == "novita-gpu-api:prod-3f9a1c2b7d10"
    assert tagged_name("registry.example.com:5000/api", "3f9a1c2b7d10") == "registry.example.com:5000/api:3f9a1c2b7d10"
    assert (
        tagged_name("registry.example.com:5000/api:prod", "3f9a1c2b7d10")
        == "registry.example.com:5000/api:prod-3f9a1c2b7d10"
    )


# ---- the script's decisions ----------------------------------------------------------------------------------


@pulumi.runtime.test
def test_previous_is_the_newest_build_before_the_running_one() -> None:
    builds = builds_of(INSPECTED, *split_build_ref(C))
    assert [b.ref for b in builds] == [A, B, C]  # the dev build and the moving tag are not prod builds
    assert previous_build(builds, C).ref == B
    assert previous_build(builds, B).ref == A  # after one rollback, the next goes one further back
    with pytest.raises(RollbackError, match="no build older than"):
        previous_build(builds, A)
    with pytest.raises(RollbackError, match="not in this Docker engine"):
        previous_build(builds, "novita-gpu-api:prod-eeeeeeeeeeee")


@pulumi.runtime.test
def test_a_rebuild_of_the_same_image_is_not_a_rollback_target() -> None:
    builds = [
        Build(A, "sha256:same", "2026-12-01T10:00:00Z"),
        Build(B, "sha256:other", "2026-12-01T11:00:00Z"),
        Build(C, "sha256:same", "2026-12-01T12:00:00Z"),
    ]
    assert previous_build(builds, C).ref == B


@pulumi.runtime.test
def test_pruning_keeps_the_newest_and_always_the_running_build() -> None:
    builds = builds_of(INSPECTED, *split_build_ref(C))
    assert [b.ref for b in builds_to_prune(builds, C, keep=1)] == [A, B]
    assert [b.ref for b in builds_to_prune(builds, A, keep=1)] == [B]  # A runs (rolled back): kept
    assert builds_to_prune(builds, C, keep=5) == []
    with pytest.raises(RollbackError):
        builds_to_prune(builds, C, keep=0)


@pulumi.runtime.test
def test_only_build_tags_are_understood() -> None:
    assert split_build_ref(C) == ("novita-gpu-api", "prod-")
    assert split_build_ref("registry.example.com:5000/api:3f9a1c2b7d10") == ("registry.example.com:5000/api", "")
    for bad in ("novita-gpu-api:prod", "novita-gpu-api", "registry.example.com:5000/api"):
        with pytest.raises(RollbackError, match="not a build tag"):
            split_build_ref(bad)


# ---- the script, end to end, with fake CLIs ----------------------------------------------------------------

FAKE_CLI = """#!{python}
import json, os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_CLI_LOG"], "a") as log:
    log.write(json.dumps([os.path.basename(sys.argv[0]), *args]) + "\\n")
state = json.load(open(os.environ["FAKE_CLI_STATE"]))
if args[:3] == ["stack", "output", "imageName"]:
    print(json.dumps(state["running"]))
elif args[:2] == ["image", "ls"]:
    print("\\n".join(tag for image in state["images"] for tag in image["RepoTags"]))
elif args[:2] == ["image", "inspect"]:
    print(json.dumps([image for image in state["images"] if set(image["RepoTags"]) & set(args[2:])]))
"""


def _run_script(tmp_path: Path, running: str, *args: str) -> tuple[subprocess.CompletedProcess, list[list[str]]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in ("pulumi", "docker"):
        (bin_dir / name).write_text(FAKE_CLI.format(python=sys.executable))
        (bin_dir / name).chmod(0o755)
    (tmp_path / "state.json").write_text(json.dumps({"running": running, "images": INSPECTED}))
    log = tmp_path / "calls.log"
    log.write_text("")
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "FAKE_CLI_LOG": str(log),
        "FAKE_CLI_STATE": str(tmp_path / "state.json"),
    }
    result = subprocess.run([sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=60)
    return result, [json.loads(line) for line in log.read_text().splitlines()]


def _changes(calls: list[list[str]]) -> list[list[str]]:
    return [c for c in calls if c[:2] in (["pulumi", "config"], ["pulumi", "up"]) or c[:3] == ["docker", "image", "rm"]]


@pulumi.runtime.test
def test_rollback_pins_the_previous_build_and_runs_pulumi_up(tmp_path: Path) -> None:
    result, calls = _run_script(tmp_path, C, "--stack", "prod", "--apply", "--yes")
    assert result.returncode == 0, result.stderr
    assert _changes(calls) == [
        ["pulumi", "config", "set", "--stack", "prod", "apiImage", B],
        ["pulumi", "up", "--stack", "prod", "--yes"],
    ]
    assert f"previous build {B}" in result.stdout


@pulumi.runtime.test
def test_rollback_without_apply_changes_nothing(tmp_path: Path) -> None:
    result, calls = _run_script(tmp_path, C, "--stack", "prod")
    assert result.returncode == 0 and f"previous build {B}" in result.stdout
    assert _changes(calls) == []


@pulumi.runtime.test
def test_rollback_with_nothing_older_fails_and_says_why(tmp_path: Path) -> None:
    result, calls = _run_script(tmp_path, A, "--stack", "prod", "--apply")
    assert result.returncode == 1 and "no build older than" in result.stderr
    assert _changes(calls) == []


@pulumi.runtime.test
def test_prune_removes_old_build_tags_only(tmp_path: Path) -> None:
    result, calls = _run_script(tmp_path, C, "--stack", "prod", "--prune", "--keep", "1", "--apply")
    assert result.returncode == 0, result.stderr
    assert _changes(calls) == [["docker", "image", "rm", A], ["docker", "image", "rm", B]]
