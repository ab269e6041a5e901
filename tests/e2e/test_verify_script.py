"""`make verify` (scripts/verify.py) against containers created the way the program defines them."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.e2e.harness import REPO_ROOT

pytestmark = pytest.mark.e2e


def run_verify(deployment, *extra: str) -> subprocess.CompletedProcess[str]:
    """Run the script with the target taken from the rendered stack's outputs, as `make verify` takes them."""
    outputs = deployment.stack.outputs
    command = [
        sys.executable,
        str(REPO_ROOT / "scripts" / "verify.py"),
        "--stack",
        deployment.stack.stack,
        "--container",
        outputs["containerNames"][0],
        "--url",
        outputs["apiUrl"],
        "--expect-restart",
        outputs["restartPolicy"],
        "--wait-seconds",
        "30",
        "--recovery-timeout",
        "60",
        *extra,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=180, cwd=REPO_ROOT)
    print(result.stdout, result.stderr)
    return result


def test_verify_passes_with_a_real_crash_test(deploy):
    deployment = deploy("prod")
    result = run_verify(deployment, "--crash-test")
    assert result.returncode == 0, result.stdout + result.stderr
    (name,) = deployment.stack.outputs["containerNames"]
    assert f"Verifying stack prod: container {name}" in result.stdout
    for item in (
        "container running",
        "health passing",
        "restart policy",
        "API answering",
        "Valkey connected",
        "logs readable",
        "auto-restart after crash",
    ):
        assert f"[PASS] {item}" in result.stdout
    assert deployment.api.restart_count() == 1  # the crash was real


def test_verify_fails_naming_a_wrong_restart_policy(deploy):
    deployment = deploy("prod")
    # Drift on the live container (someone ran `docker update --restart no`): the stack says `always`.
    deployment.client.api.update_container(deployment.api.container_id, restart_policy={"Name": "no"})
    result = run_verify(deployment)
    assert result.returncode == 1
    assert "[FAIL] restart policy: 'no' (expected 'always')" in result.stdout
    assert "FAILED (prod/" in result.stdout and result.stdout.rstrip().endswith(": restart policy")


def test_verify_fails_naming_an_unreachable_valkey(deploy):
    deployment = deploy("prod")
    deployment.stop_valkey()
    result = run_verify(deployment)
    assert result.returncode == 1
    assert "[FAIL] Valkey connected" in result.stdout and "services.redis='down'" in result.stdout
    assert result.stdout.rstrip().endswith(": Valkey connected")
    assert "[PASS] health passing" in result.stdout  # a Valkey outage does not make the container unhealthy


def test_verify_checks_every_replica_and_the_proxy_and_the_api_through_it(proxied_deploy):
    deployment = proxied_deploy("prod", replicas=2)
    names = [replica.name for replica in deployment.replicas] + [deployment.proxy.spec.name]
    command = [
        sys.executable,
        str(REPO_ROOT / "scripts" / "verify.py"),
        "--stack",
        "prod",
        "--url",
        deployment.proxy_url,
        "--expect-restart",
        "always",
        "--wait-seconds",
        "30",
    ]
    for name in names:
        command += ["--container", name]
    result = subprocess.run(command, capture_output=True, text=True, timeout=180, cwd=REPO_ROOT)
    print(result.stdout, result.stderr)
    assert result.returncode == 0, result.stdout + result.stderr
    for name in names:
        for item in ("container running", "health passing", "restart policy", "logs readable"):
            assert f"[PASS] {item} [{name}]" in result.stdout
    assert "[PASS] API answering" in result.stdout and "[PASS] Valkey connected" in result.stdout

    deployment.client.api.stop(deployment.replicas[1].container.container_id, timeout=10)  # one replica down
    result = subprocess.run(command, capture_output=True, text=True, timeout=180, cwd=REPO_ROOT)
    assert result.returncode == 1
    assert f"[FAIL] container running [{names[1]}]" in result.stdout
    assert "[PASS] API answering" in result.stdout  # the proxy still serves through the other replica
