"""Roll a stack back to the build before the one it runs, or prune old builds, through Pulumi and the Docker CLI.

    python scripts/rollback.py --stack prod                 # plan: show the running and the previous build
    python scripts/rollback.py --stack prod --apply [--yes] # pulumi config set apiImage <previous>; pulumi up
    python scripts/rollback.py --stack prod --prune --keep 5 [--apply]

Every build of the API image is tagged `<imageName>-<content digest>` (components/api_image.py), so earlier builds
stay in the engine under their own tags. The running build is the stack output `imageName`; "previous" is the newest
build of the same stack's tags created before it, so running the rollback again goes one build further back. Roll
forward with `pulumi config rm --stack <stack> apiImage && pulumi up --stack <stack>` (the same sources give the same
tag, so an unchanged build is not rebuilt).

Pruning rule: per stack, keep the `--keep` newest builds (default 5) and always the running one; remove the
other build tags (`docker image rm`, which refuses an image a container still uses).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

BUILD_TAG = r"[0-9a-f]{12}"  # components/api_image.py BUILD_TAG_LENGTH hex digits
DEFAULT_KEEP = 5


class RollbackError(Exception):
    """Nothing sensible to do; the message says why."""


@dataclass(frozen=True)
class Build:
    """One image build in the engine, by the tag the program gave it."""

    ref: str
    image_id: str
    created: str  # RFC 3339 with nanoseconds, as `docker image inspect` prints it

    @property
    def instant(self) -> tuple[datetime, int]:
        """`created` as (time to the second, nanoseconds): Go trims trailing zeros of the fraction, so the text
        alone does not sort."""
        match = re.fullmatch(r"(.+?)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", self.created)
        if match is None:
            raise RollbackError(f"unexpected image creation time {self.created!r}")
        seconds = datetime.fromisoformat(match.group(1) + match.group(3).replace("Z", "+00:00"))
        return seconds.astimezone(UTC), int((match.group(2) or "0").ljust(9, "0")[:9])


def split_build_ref(running: str) -> tuple[str, str]:
    """`novita-gpu-api:prod-3f9a1c2b7d10` -> (`novita-gpu-api`, `prod-`): the repository and the stack's tag prefix."""
    repository, _, tag = running.rpartition(":")
    match = re.fullmatch(rf"(.*?-?){BUILD_TAG}", tag)
    if not repository or "/" in tag or match is None:
        raise RollbackError(f"{running!r} is not a build tag of this program (<imageName>-<12 hex digits>)")
    return repository, match.group(1)


def builds_of(inspected: list[dict], repository: str, prefix: str) -> list[Build]:
    """The stack's builds among `docker image inspect` results, oldest first."""
    pattern = re.compile(rf"{re.escape(repository)}:{re.escape(prefix)}{BUILD_TAG}")
    found = {}
    for image in inspected:
        for ref in image.get("RepoTags") or []:
            if pattern.fullmatch(ref):
                found[ref] = Build(ref, image["Id"], image["Created"])
    return sorted(found.values(), key=lambda build: (build.instant, build.ref))


def previous_build(builds: Sequence[Build], running: str) -> Build:
    """The newest build created before the running one (and not the same image)."""
    current = next((build for build in builds if build.ref == running), None)
    if current is None:
        raise RollbackError(
            f"the running build {running} is not in this Docker engine; run the rollback where it was built"
        )
    older = [b for b in builds if b.instant < current.instant and b.image_id != current.image_id]
    if not older:
        raise RollbackError(f"no build older than {running} is left in this Docker engine")
    return older[-1]


def builds_to_prune(builds: Sequence[Build], running: str, keep: int) -> list[Build]:
    """Everything but the `keep` newest builds and the running one."""
    if keep < 1:
        raise RollbackError("--keep must be at least 1")
    kept = {build.ref for build in builds[-keep:]} | {running}
    return [build for build in builds if build.ref not in kept]


def _run(command: list[str], capture: bool = True) -> str:
    result = subprocess.run(command, capture_output=capture, text=True)
    if result.returncode != 0:
        detail = (result.stderr or "").strip().splitlines()[-1:] if capture else []
        raise RollbackError(
            f"{' '.join(command[:3])} ... failed ({result.returncode}){': ' + detail[0] if detail else ''}"
        )
    return result.stdout if capture else ""


def engine_builds(repository: str, prefix: str) -> list[Build]:
    """The stack's builds in the local Docker engine."""
    refs = _run(
        [
            "docker",
            "image",
            "ls",
            "--filter",
            f"reference={repository}:{prefix}*",
            "--format",
            "{{.Repository}}:{{.Tag}}",
        ]
    ).split()
    if not refs:
        return []
    return builds_of(json.loads(_run(["docker", "image", "inspect", *refs])), repository, prefix)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(prog="scripts/rollback.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--stack", required=True)
    parser.add_argument("--apply", action="store_true", help="change something (default: only say what would change)")
    parser.add_argument("--yes", action="store_true", help="pass --yes to pulumi up (no confirmation prompt)")
    parser.add_argument("--prune", action="store_true", help="remove old builds instead of rolling back")
    parser.add_argument(
        "--keep", type=int, default=DEFAULT_KEEP, help=f"builds kept when pruning (default {DEFAULT_KEEP})"
    )
    args = parser.parse_args(argv)
    try:
        running = json.loads(_run(["pulumi", "stack", "output", "imageName", "--stack", args.stack, "--json"]))
        repository, prefix = split_build_ref(running)
        builds = engine_builds(repository, prefix)
        if args.prune:
            doomed = builds_to_prune(builds, running, args.keep)
            for build in doomed:
                print(f"{'removing' if args.apply else 'would remove'} {build.ref} (built {build.created})")
                if args.apply:
                    _run(["docker", "image", "rm", build.ref])
            print(
                f"kept {len(builds) - len(doomed)} of {len(builds)} builds of {args.stack}, the running {running} included"
            )
            return 0
        target = previous_build(builds, running)
        print(
            f"{args.stack}: running {running}; previous build {target.ref} ({target.image_id[:19]}, built {target.created})"
        )
        if not args.apply:
            print("dry run: add --apply to deploy it")
            return 0
        _run(["pulumi", "config", "set", "--stack", args.stack, "apiImage", target.ref])
        _run(["pulumi", "up", "--stack", args.stack, *(["--yes"] if args.yes else [])], capture=False)
        print(
            f"{args.stack} runs {target.ref}; roll forward with: pulumi config rm --stack {args.stack} apiImage && pulumi up --stack {args.stack}"
        )
        return 0
    except RollbackError as error:
        print(f"rollback: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
