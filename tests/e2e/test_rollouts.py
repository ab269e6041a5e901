"""Issue 11 on the real engine: replicas behind the edge proxy keep answering through rollouts, a bad image, a
kill -9 and a wedged replica, under a steady load from 127.0.0.1 (>= 20 requests/s)."""

from __future__ import annotations

import contextlib
import io
import signal
import time
from collections.abc import Callable, Iterator

import docker
import pytest

from tests.e2e.harness import ApiContainer, Measurements, id_of
from tests.e2e.proxied import ProxiedDeployment, RolloutFailed, SteadyLoad

pytestmark = pytest.mark.e2e

MIN_RATE = 20.0
SETTLE_SECONDS = 3.0


@pytest.fixture
def derived_image(docker_client: docker.DockerClient, api_image: str) -> Iterator:
    """Factory: an image built FROM the session's API image with extra Dockerfile lines; removed afterwards (request
    it before `proxied_deploy`, so the containers that use it are gone by then)."""
    from tests.e2e.conftest import SESSION_ID

    built: list[str] = []

    def _build(kind: str, lines: str) -> str:
        dockerfile = f"FROM {api_image}\n{lines}\n".encode()
        image, _ = docker_client.images.build(
            fileobj=io.BytesIO(dockerfile), tag=f"novita-gpu-api:e2e-{SESSION_ID}-{kind}", rm=True, forcerm=True
        )
        built.append(id_of(image))
        return id_of(image)

    yield _build
    for image_id in built:
        with contextlib.suppress(docker.errors.APIError):
            docker_client.images.remove(image_id, force=True)


def assert_no_failed_request(load: SteadyLoad) -> None:
    print(f"load: {load.sent} requests at {load.rate:.1f}/s, {len(load.failures)} failed")
    assert load.failures == [], load.failures[:10]
    assert load.rate >= MIN_RATE, f"the load ran at {load.rate:.1f} requests/s only"


def test_rollout_to_a_changed_image_fails_no_request(derived_image, proxied_deploy, measurements: Measurements):
    deployment: ProxiedDeployment = proxied_deploy("prod", replicas=2)
    changed = derived_image("changed", "LABEL novita-gpu-api.e2e.generation=2")
    old_names = [replica.name for replica in deployment.replicas]
    with SteadyLoad(deployment.proxy_url, deployment.create_instance()) as load:
        time.sleep(SETTLE_SECONDS)
        seconds = deployment.roll(changed)
        time.sleep(SETTLE_SECONDS)
    measurements.record("rollout of 2 replicas under load (s)", seconds)
    measurements.record("rollout of 2 replicas: requests / failed", f"{load.sent} / {len(load.failures)}")
    assert_no_failed_request(load)
    assert [replica.container.inspect()["Image"] for replica in deployment.replicas] == [changed, changed]
    assert not {replica.name for replica in deployment.replicas} & set(old_names)


def test_rollout_to_an_image_that_never_turns_ready_stops_at_the_first_replica(derived_image, proxied_deploy):
    deployment: ProxiedDeployment = proxied_deploy("prod", replicas=2)
    broken = derived_image("broken", 'CMD ["python", "-c", "raise SystemExit(\'start-up raises on purpose\')"]')
    before = [replica.container.container_id for replica in deployment.replicas]
    with SteadyLoad(deployment.proxy_url, deployment.create_instance()) as load:
        time.sleep(SETTLE_SECONDS)
        with pytest.raises(RolloutFailed) as failed:
            deployment.roll(broken)
        time.sleep(SETTLE_SECONDS)  # the old replicas go on serving afterwards
    print(failed.value)
    assert f"replica {deployment.prefix}-api-1 " in str(failed.value)  # named; the second was never started
    assert [replica.container.container_id for replica in deployment.replicas] == before
    assert {replica.container.health() for replica in deployment.replicas} == {"healthy"}
    assert_no_failed_request(load)


def assert_replica_recovers_under_load(
    deployment: ProxiedDeployment,
    fault: Callable[[ApiContainer], object],
    restart_timeout: float,
    measured: str,
    measurements: Measurements,
) -> None:
    """Under load, `fault` hits the first replica; Docker restarts it and it turns healthy again while the proxy
    fails no request. Records `measured`: the seconds from the fault to healthy."""
    victim = deployment.replicas[0].container
    before = victim.restart_count()
    with SteadyLoad(deployment.proxy_url, deployment.create_instance()) as load:
        time.sleep(SETTLE_SECONDS)
        fault(victim)
        hit_at = time.monotonic()
        victim.wait_restarted(before, timeout=restart_timeout)
        victim.wait_health("healthy", timeout=60)
        measurements.record(measured, time.monotonic() - hit_at)
        time.sleep(SETTLE_SECONDS)
    assert_no_failed_request(load)


def test_kill_9_of_one_replica_fails_no_request_and_it_comes_back(proxied_deploy, measurements: Measurements):
    assert_replica_recovers_under_load(
        proxied_deploy("prod", replicas=2),
        lambda victim: victim.kill_from_host(victim.main_pid(), signal.SIGKILL),
        30,
        "behind the proxy: kill -9 -> replica healthy again (s)",
        measurements,
    )


def test_a_wedged_replica_fails_no_request(proxied_deploy, measurements: Measurements):
    assert_replica_recovers_under_load(
        proxied_deploy("prod", replicas=2),
        # Frozen: it accepts connections, never answers.
        lambda victim: victim.kill_from_host(victim.app_pid(), signal.SIGSTOP),
        60,
        "behind the proxy: wedged -> replica healthy again (s)",
        measurements,
    )
