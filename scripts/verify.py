"""`make verify`: the seed's verification checklist, run against a live deployment of a stack.

    python scripts/verify.py --stack prod [--container NAME ...] [--url URL] [--expect-restart POLICY] [--crash-test]

Without --container/--url/--expect-restart the values come from the stack's outputs (`pulumi stack output`:
containerNames and proxyContainerNames, apiUrl, restartPolicy). Per container (every API replica and the edge
proxy): running, health passing, restart policy as configured, logs readable; through the URL (the proxy): API
answering and Valkey connected (/health services.redis). With --crash-test, a real crash of the first container: its
main process is killed with SIGKILL from the host (what a crash looks like to Docker; `docker stop` and
`docker kill` never trigger a restart), then it must be restarted by Docker and healthy again.
Prints one line per item and exits 1 naming the failed items. The crash test needs to run on the Docker host as root.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors
from docker.models.containers import Container

HTTP_TIMEOUT_SECONDS = 5.0
POLL_SECONDS = 0.5


@dataclass
class Check:
    """One item of the checklist."""

    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class Target:
    """What to verify."""

    stack: str
    containers: tuple[str, ...]
    url: str
    expected_restart: str


def wait_until(condition: Callable[[], bool], timeout_seconds: float) -> bool:
    """Poll `condition` until it holds or the time is up; whether it held."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_SECONDS)


def http_json(url: str) -> tuple[int, Any]:
    """GET a JSON document; (status, body). Error statuses are answers too (503 from /health carries the reason)."""
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_SECONDS) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        try:
            return error.code, json.loads(error.read() or b"null")
        except ValueError:
            return error.code, None


def health_status(container: Container) -> str:
    """Docker's health status, or `none` when the container has no healthcheck."""
    container.reload()
    return (container.attrs["State"].get("Health") or {}).get("Status", "none")


class Verifier:
    """Runs the checklist against one container (and the API through the target's URL)."""

    def __init__(self, client: docker.DockerClient, target: Target, container: str, wait_seconds: float) -> None:
        self.client = client
        self.target = target
        self.name = container
        self.wait_seconds = wait_seconds

    def container(self) -> Container:
        return self.client.containers.get(self.name)

    def check_running(self) -> Check:
        state = self.container().attrs["State"]
        running = state["Running"] and not state["Restarting"]
        return Check("container running", running, f"status {state['Status']}, restarts {self.restart_count()}")

    def check_health(self) -> Check:
        container = self.container()
        wait_until(lambda: health_status(container) != "starting", self.wait_seconds)
        status = health_status(container)
        detail = f"Docker health {status}"
        if status != "healthy":
            log = (container.attrs["State"].get("Health") or {}).get("Log") or []
            if log:
                detail += f"; last probe: {log[-1].get('Output', '').strip()}"
        return Check("health passing", status == "healthy", detail)

    def check_restart_policy(self) -> Check:
        policy = self.container().attrs["HostConfig"]["RestartPolicy"]["Name"] or "no"
        return Check(
            "restart policy",
            policy == self.target.expected_restart,
            f"{policy!r} (expected {self.target.expected_restart!r})",
        )

    def check_api(self) -> Check:
        try:
            status, body = http_json(f"{self.target.url}/livez")
        except (OSError, ValueError) as error:
            return Check("API answering", False, f"GET /livez failed: {error}")
        return Check("API answering", status == 200, f"GET /livez -> {status} {body}")

    def check_valkey(self) -> Check:
        try:
            status, body = http_json(f"{self.target.url}/health")
        except (OSError, ValueError) as error:
            return Check("Valkey connected", False, f"GET /health failed: {error}")
        services = body.get("services", {}) if isinstance(body, dict) else {}
        redis = services.get("redis")
        return Check("Valkey connected", redis == "up", f"/health -> {status}, services.redis={redis!r}")

    def check_logs(self) -> Check:
        lines = self.container().logs(tail=20).decode(errors="replace").splitlines()
        last = lines[-1][:160] if lines else ""
        return Check("logs readable", bool(lines), f"{len(lines)} recent lines; last: {last}" if lines else "no output")

    def check_crash_recovery(self, recovery_timeout: float) -> Check:
        container = self.container()
        before = self.restart_count()
        pid = container.attrs["State"]["Pid"]
        if not pid:
            return Check("auto-restart after crash", False, "container has no main process to kill")
        try:
            os.kill(pid, signal.SIGKILL)
        except PermissionError:
            return Check("auto-restart after crash", False, f"not allowed to kill pid {pid}: run as root on the host")
        killed_at = time.monotonic()
        restarted = wait_until(lambda: self.restart_count() > before, recovery_timeout)
        if not restarted:
            return Check(
                "auto-restart after crash",
                False,
                f"killed pid {pid}; Docker did not restart it within {recovery_timeout:g}s",
            )
        restarted_after = time.monotonic() - killed_at
        remaining = max(1.0, recovery_timeout - restarted_after)
        healthy = wait_until(lambda: health_status(container) == "healthy", remaining)
        recovered_after = time.monotonic() - killed_at
        detail = (
            f"killed pid {pid}; restarted after {restarted_after:.1f}s (RestartCount {before} -> "
            f"{self.restart_count()}); "
            + (f"healthy after {recovered_after:.1f}s" if healthy else f"not healthy within {recovery_timeout:g}s")
        )
        return Check("auto-restart after crash", healthy, detail)

    def restart_count(self) -> int:
        container = self.container()
        container.reload()
        return int(container.attrs["RestartCount"])

    def run(self, crash_test: bool, recovery_timeout: float) -> list[Check]:
        try:
            self.container()
        except docker.errors.NotFound:
            return [Check("container running", False, f"no container named {self.name!r}")]
        checks = [self.check_running(), self.check_health(), self.check_restart_policy(), self.check_logs()]
        if crash_test:
            checks.append(self.check_crash_recovery(recovery_timeout))
        return checks


def run_checklist(
    client: docker.DockerClient, target: Target, wait_seconds: float, crash_test: bool, recovery_timeout: float
) -> list[Check]:
    """Every container's checks (named after the container when there are several), then the API's."""
    checks: list[Check] = []
    several = len(target.containers) > 1
    for index, name in enumerate(target.containers):
        verifier = Verifier(client, target, name, wait_seconds)
        for check in verifier.run(crash_test and index == 0, recovery_timeout):
            checks.append(Check(f"{check.name} [{name}]", check.passed, check.detail) if several else check)
    through = Verifier(client, target, target.containers[0], wait_seconds)
    checks[len(checks) :] = [through.check_api(), through.check_valkey()]
    return checks


def stack_outputs(stack: str) -> dict[str, Any]:
    """The stack's outputs from the Pulumi CLI (no secrets are shown)."""
    try:
        result = subprocess.run(
            ["pulumi", "stack", "output", "--json", "--stack", stack],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
    except (OSError, subprocess.SubprocessError) as error:
        raise SystemExit(
            f"verify: cannot read outputs of stack {stack!r} ({error}); pass --container, --url and --expect-restart"
        ) from None
    return json.loads(result.stdout)


def resolve_target(args: argparse.Namespace) -> Target:
    """Fill in what the arguments leave out from the stack outputs."""
    outputs: dict[str, Any] = {}
    if not (args.container and args.url and args.expect_restart):
        outputs = stack_outputs(args.stack)
    containers = args.container or [*outputs.get("containerNames", []), *outputs.get("proxyContainerNames", [])]
    url = args.url or outputs.get("apiUrl")
    expected = args.expect_restart or outputs.get("restartPolicy")
    missing = [
        name
        for name, value in (("--container", containers), ("--url", url), ("--expect-restart", expected))
        if not value
    ]
    if missing:
        raise SystemExit(f"verify: stack {args.stack!r} outputs do not give {', '.join(missing)}; pass them")
    assert url and expected  # else named in `missing`
    return Target(stack=args.stack, containers=tuple(containers), url=url.rstrip("/"), expected_restart=expected)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Verify a live deployment (the seed's checklist).")
    parser.add_argument("--stack", required=True, help="stack name, e.g. prod")
    parser.add_argument(
        "--container",
        action="append",
        help="a container to check; repeat for several (default: every replica and proxy of the stack)",
    )
    parser.add_argument("--url", help="API base URL (default: stack output apiUrl)")
    parser.add_argument(
        "--expect-restart",
        choices=("no", "on-failure", "always", "unless-stopped"),
        help="expected restart policy (default: stack output restartPolicy)",
    )
    parser.add_argument(
        "--crash-test",
        action="store_true",
        help="kill the container's main process (SIGKILL from the host) and wait for recovery",
    )
    parser.add_argument(
        "--wait-seconds",
        type=float,
        default=150.0,
        help="how long to wait for a starting container to turn healthy (default 150)",
    )
    parser.add_argument(
        "--recovery-timeout",
        type=float,
        default=240.0,
        help="how long the crash test waits for restart and health (default 240)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the checklist; 0 when every item passes."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    target = resolve_target(args)
    try:
        client = docker.from_env(version="auto")
    except docker.errors.DockerException as error:
        print(f"verify: cannot reach the Docker engine: {error}", file=sys.stderr)
        return 2
    print(f"Verifying stack {target.stack}: container {', '.join(target.containers)} at {target.url}")
    checks = run_checklist(client, target, args.wait_seconds, args.crash_test, args.recovery_timeout)
    for check in checks:
        print(f"  [{'PASS' if check.passed else 'FAIL'}] {check.name}: {check.detail}")
    failed = [check.name for check in checks if not check.passed]
    if failed:
        print(f"FAILED ({target.stack}/{','.join(target.containers)}): {', '.join(failed)}")
        return 1
    print(f"OK ({target.stack}/{','.join(target.containers)}): all {len(checks)} checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
