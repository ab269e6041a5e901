"""The pack started as the Pulumi CLI starts it: `python -u -m pulumi.policy <engine> .` in policy/ (the command of
the CLI's pulumi-analyzer-policy-python shim), with the stack's name and config in the environment, answering the
analyzer's gRPC calls on loopback. No CLI is needed: this is the process the CLI would talk to."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
import pulumi
from google.protobuf import empty_pb2
from pulumi.runtime import proto
from pulumi.runtime.proto import analyzer_pb2_grpc

from policy import rules
from tests.infra.harness import REPO_ROOT, Registration
from tests.policy.pack import ADVISORY, MANDATORY, RawRecordingMonitor, api_container, edited, run_program

POLICY_DIR = REPO_ROOT / "policy"
START_TIMEOUT_SECONDS = 30


@contextmanager
def started_pack(stack_name: str, config: dict[str, str]) -> Iterator[analyzer_pb2_grpc.AnalyzerStub]:
    env = {
        **os.environ,
        "PULUMI_PROJECT": rules.PROJECT,
        "PULUMI_STACK": stack_name,
        "PULUMI_DRY_RUN": "false",
        "PULUMI_CONFIG": json.dumps(config),
    }
    process = subprocess.Popen(
        [sys.executable, "-u", "-m", "pulumi.policy", "127.0.0.1:0", "."],
        cwd=POLICY_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None  # both are pipes
    try:
        ready, _, _ = select.select([process.stdout], [], [], START_TIMEOUT_SECONDS)
        line = process.stdout.readline() if ready else b""
        if not line.strip().isdigit():
            process.kill()
            raise AssertionError(f"the pack did not print its port: {line!r} {process.communicate()[1].decode()}")
        with grpc.insecure_channel(f"127.0.0.1:{int(line)}") as channel:
            yield analyzer_pb2_grpc.AnalyzerStub(channel)
    finally:
        process.terminate()
        process.wait(timeout=10)


def analyze(stub: analyzer_pb2_grpc.AnalyzerStub, registration: Registration, properties) -> list[tuple[str, int]]:
    response = stub.Analyze(
        proto.AnalyzeRequest(
            type=registration.type,
            urn=registration.urn,
            name=registration.name,
            properties=properties,
            options=proto.AnalyzerResourceOptions(protect=registration.protect),
        )
    )
    return [(d.policyName, d.enforcementLevel) for d in response.diagnostics]


def test_the_started_pack_lists_its_policies_and_levels() -> None:
    with started_pack("prod", {}) as stub:
        info = stub.GetAnalyzerInfo(empty_pb2.Empty())
    assert info.name == "novita-gpu-api-production"
    levels = {policy.name: policy.enforcementLevel for policy in info.policies}
    assert set(levels) == {policy.name for policy in rules.POLICIES}
    assert {name for name, level in levels.items() if level == ADVISORY} == {"secret-named-env-is-contract-secret"}
    assert {name for name, level in levels.items() if level == MANDATORY} == set(levels) - {
        "secret-named-env-is-contract-secret"
    }


@pulumi.runtime.test
async def test_the_started_pack_judges_the_prod_program_and_leaves_dev_alone() -> None:
    prod = await run_program("prod")
    monitor: RawRecordingMonitor = prod.monitor  # type: ignore[assignment]
    container = api_container(prod)
    raw = monitor.raw[container.urn]
    restart_changed = edited(raw, lambda document: document.update(restart="on-failure"))
    with started_pack("prod", prod.config) as stub:
        assert analyze(stub, container, raw) == []
        assert analyze(stub, container, restart_changed) == [("api-restart-always", MANDATORY)]

    dev = await run_program("dev")
    with started_pack("dev", dev.config) as stub:
        # The same violating container is not judged on a development stack.
        assert analyze(stub, container, restart_changed) == []
