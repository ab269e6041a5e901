"""(e) Two Docker engines on this machine as two `dockerHosts`: both serve, and a bad image stops at the first."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator

import docker
import pytest

from tests.e2e.conftest import RUN_LABELS, SESSION_ID
from tests.e2e.harness import HAPROXY_IMAGE, VALKEY_IMAGE, Measurements, id_of
from tests.e2e.multihost import MultiHostDeployment, SecondEngine
from tests.e2e.proxied import RolloutFailed, SteadyLoad, create_instance

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def second_engine(docker_client: docker.DockerClient) -> Iterator[SecondEngine]:
    engine = SecondEngine.start(SESSION_ID)
    try:
        yield engine
    finally:
        engine.stop()


def test_two_hosts_both_serve_and_a_bad_image_stops_at_the_first(
    docker_client: docker.DockerClient, api_image: str, second_engine: SecondEngine, measurements: Measurements
):
    broken, _ = docker_client.images.build(
        fileobj=io.BytesIO(
            f'FROM {api_image}\nCMD ["python", "-c", "raise SystemExit(\'start-up raises\')"]\n'.encode()
        ),
        tag=f"novita-gpu-api:e2e-{SESSION_ID}-broken-multihost",
        rm=True,
    )
    started = time.monotonic()
    second_engine.load(docker_client, [api_image, id_of(broken), HAPROXY_IMAGE, VALKEY_IMAGE])
    measurements.record("second engine: images copied in (s)", time.monotonic() - started)
    deployment = MultiHostDeployment.create(
        docker_client, second_engine, f"e2e-{SESSION_ID}-hosts", api_image, RUN_LABELS
    )
    try:
        first, second = deployment.hosts
        instance_id = create_instance(first.proxy_url)
        before = [[replica.container.container_id for replica in host.replicas] for host in deployment.hosts]
        with (
            SteadyLoad(first.proxy_url, instance_id, rate=15) as load_first,
            SteadyLoad(second.proxy_url, instance_id, rate=15) as load_second,
        ):  # the one Valkey: same record
            time.sleep(3)
            with pytest.raises(RolloutFailed) as failed:
                deployment.roll(id_of(broken))
            time.sleep(3)
        print(failed.value)
        for load in (load_first, load_second):  # both hosts served throughout, and after the failed rollout
            print(f"load: {load.sent} requests at {load.rate:.1f}/s, {len(load.failures)} failed")
            assert load.failures == [], load.failures[:10]
        assert load_first.rate + load_second.rate >= 20
        assert f"replica {deployment.prefix}-api-1 " in str(failed.value)  # the first host's replica, named
        # The second host was never touched: its replica is the same container, still running.
        assert [[replica.container.container_id for replica in host.replicas] for host in deployment.hosts] == before
        states = {
            replica.name: (replica.container.inspect()["State"]["Running"], replica.container.health())
            for host in deployment.hosts
            for replica in host.replicas
        }
        print(states)
        assert all(running for running, _ in states.values()), states
    finally:
        deployment.remove()
        docker_client.images.remove(id_of(broken), force=True)
