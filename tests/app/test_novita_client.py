"""The Novita client against the fake Novita server over real HTTP: endpoints, retries, breaker, rate limit, errors.

Time-driven behaviour (backoff, breaker reset, rate limit) runs on a manual clock, so no test waits for it.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from app.novita import (
    CreateInstanceRequest,
    NovitaAuthError,
    NovitaBadRequest,
    NovitaCircuitOpen,
    NovitaClient,
    NovitaCreateOutcomeUnknown,
    NovitaError,
    NovitaInsufficientResource,
    NovitaNotFound,
    NovitaRateLimited,
    NovitaStateConflict,
    NovitaTimeout,
    NovitaUnavailable,
)
from tests.fakes.fixtures import FakeNovitaHandle, ManualClock

CREATE = ("POST", "/gpu/instance/create")
LIST = ("GET", "/gpu/instances")
GET = ("GET", "/gpu/instance")
CLUSTERS = ("GET", "/clusters")
AVAILABLE_4090 = "4090-us-ca-6"
SOLD_OUT_4090 = "4090-eu-de-1"

ClientFactory = Callable[..., NovitaClient]


class RecordingTransport(httpx.AsyncBaseTransport):
    """Real HTTP transport that notes the manual time of each request and can fail the first ones."""

    def __init__(self, clock: ManualClock, fail_first: list[Exception] | None = None) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self._clock = clock
        self._failures = list(fail_first or [])
        self.request_times: list[float] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.request_times.append(self._clock.now)
        if self._failures:
            raise self._failures.pop(0)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


@pytest.fixture
async def make_client(novita: FakeNovitaHandle, manual_clock: ManualClock) -> AsyncIterator[ClientFactory]:
    """Build clients on the fake with the manual clock; tests override any constructor argument."""
    clients: list[NovitaClient] = []

    def factory(**overrides: Any) -> NovitaClient:
        arguments: dict[str, Any] = {
            "base_url": novita.base_url,
            "api_key": novita.api_key,
            "timeout_seconds": 2.0,
            "rate_limit_per_second": 1000.0,
            "clock": manual_clock.as_clock(),
            "rng": random.Random(7),
        }
        arguments.update(overrides)
        client = NovitaClient(**arguments)
        clients.append(client)
        return client

    yield factory
    for client in clients:
        await client.aclose()


def create_request(name: str, product_id: str = AVAILABLE_4090, **fields: Any) -> CreateInstanceRequest:
    return CreateInstanceRequest(
        name=name,
        product_id=product_id,
        gpu_num=1,
        rootfs_size=50,
        image_url="docker.io/library/ubuntu:22.04",
        **fields,
    )


def metric(name: str, endpoint: str, outcome: str) -> float:
    return REGISTRY.get_sample_value(name, {"endpoint": endpoint, "outcome": outcome}) or 0.0


# -- every endpoint ------------------------------------------------------------------------------------------------


async def test_lists_products_with_prices_availability_and_filters(make_client: ClientFactory) -> None:
    client = make_client()
    products = await client.list_products()
    assert len(products) == 7
    sold_out = next(product for product in products if product.id == SOLD_OUT_4090)
    assert sold_out.available_deploy is False
    cheap = next(product for product in products if product.id == AVAILABLE_4090)
    assert (cheap.price, cheap.spot_price, cheap.regions) == (67000, 34000, ["US-CA-06 (California)"])
    assert cheap.min_root_fs == 10 and cheap.monthly_price[0].month == 1

    rtx_4090 = await client.list_products(product_name="4090")
    assert {product.id for product in rtx_4090} == {"4090-us-ca-6", "4090-as-sgp-2", "4090-eu-de-1"}
    in_singapore = await client.list_products(cluster_id="as-sgp-2")
    assert {product.id for product in in_singapore} == {"4090-as-sgp-2", "5090-as-sgp-2"}
    spot = await client.list_products(billing_method="spot")
    assert all("spot" in product.billing_methods for product in spot) and len(spot) == 5


async def test_lists_clusters(make_client: ClientFactory) -> None:
    clusters = await make_client().list_clusters()
    by_id = {cluster.id: cluster for cluster in clusters}
    assert set(by_id) == {"us-ca-6", "as-sgp-2", "eu-de-1", "cn-hongkong-1"}
    assert by_id["us-ca-6"].support_network_storage is True
    assert "RTX 5090 32GB" in by_id["as-sgp-2"].available_gpu_type


async def test_instance_lifecycle_create_stop_start_restart_delete(
    make_client: ClientFactory, novita: FakeNovitaHandle
) -> None:
    novita.set_step_seconds(None)
    client = make_client()
    instance_id = await client.create_instance(
        create_request("lifecycle", ports="8888/http,22/tcp", billing_mode="spot")
    )
    created = await client.get_instance(instance_id)
    assert (created.name, created.status, created.billing_mode, created.gpu_num) == ("lifecycle", "toCreate", "spot", 1)
    assert [(mapping.port, mapping.type) for mapping in created.port_mappings] == [(8888, "http"), (22, "tcp")]
    assert not created.failed

    seen = []
    for _ in range(3):
        novita.advance(instance_id)
        seen.append((await client.get_instance(instance_id)).status)
    assert seen == ["creating", "pulling", "running"]

    await client.stop_instance(instance_id)
    novita.advance(instance_id, steps=2)
    assert (await client.get_instance(instance_id)).status == "exited"
    await client.start_instance(instance_id)
    assert (await client.get_instance(instance_id)).status == "toStart"
    novita.advance(instance_id, steps=2)
    await client.restart_instance(instance_id)
    assert (await client.get_instance(instance_id)).status == "toRestart"
    await client.delete_instance(instance_id)
    novita.advance(instance_id, steps=2)
    removed = await client.get_instance(instance_id)
    assert removed.status == "removed" and removed.removed


async def test_migrate_moves_a_stopped_spot_instance_back_to_running(
    make_client: ClientFactory, novita: FakeNovitaHandle
) -> None:
    novita.set_step_seconds(None)
    client = make_client()
    instance_id = await client.create_instance(create_request("reclaimed", billing_mode="spot"))
    novita.set_state(instance_id, status="exited")

    await client.migrate_instance(instance_id)
    assert (await client.get_instance(instance_id)).status == "migrating"
    novita.advance(instance_id)
    assert (await client.get_instance(instance_id)).status == "running"
    with pytest.raises(NovitaStateConflict):
        await client.migrate_instance(instance_id)  # only a stopped instance moves
    assert novita.call_count("POST", "/gpu/instance/migrate") == 2


async def test_instance_moves_to_running_over_time(make_client: ClientFactory, novita: FakeNovitaHandle) -> None:
    novita.set_step_seconds(0.05)
    client = make_client()
    instance_id = await client.create_instance(create_request("timed"))
    assert (await client.get_instance(instance_id)).status in ("toCreate", "creating")
    await asyncio.sleep(0.25)  # real time: three steps of 0.05 s have passed
    assert (await client.get_instance(instance_id)).status == "running"


async def test_status_error_is_the_failure_signal(make_client: ClientFactory, novita: FakeNovitaHandle) -> None:
    novita.set_step_seconds(0)
    client = make_client()
    broken = await client.create_instance(
        CreateInstanceRequest(
            name="broken",
            product_id=AVAILABLE_4090,
            gpu_num=1,
            rootfs_size=20,
            image_url="docker.io/acme/does-not-exist:1",
        )
    )
    instance = await client.get_instance(broken)
    assert instance.status == "pulling"  # there is no "failed" status ...
    assert instance.failed and instance.status_error  # ... statusError says it
    assert "failed to pull" in instance.status_error.message

    healthy = await client.create_instance(create_request("healthy"))
    assert not (await client.get_instance(healthy)).failed
    novita.set_state(healthy, status_error={"state": "running", "message": "container exited with code 137"})
    assert (await client.get_instance(healthy)).failed


async def test_instance_secrets_are_not_kept(make_client: ClientFactory) -> None:
    client = make_client()
    instance = await client.get_instance(await client.create_instance(create_request("secretive")))
    dumped = instance.model_dump_json()
    assert instance.connect_component_ssh is not None and instance.connect_component_ssh.ssh_command
    assert "ssh-pass-" not in dumped and "web-pass-" not in dumped


async def test_templates_and_registry_auths(make_client: ClientFactory) -> None:
    client = make_client(page_size=2)
    templates = await client.list_templates()
    assert [template.id for template in templates] == ["tpl-pytorch", "tpl-private", "tpl-ubuntu"]
    private = await client.get_template("tpl-private")
    assert (private.image_auth, private.ports_spec()) == ("auth-registry-1", "8000/http")
    assert (await client.get_template("tpl-pytorch")).ports_spec() == "8888/http,22/tcp"
    with pytest.raises(NovitaNotFound):
        await client.get_template("tpl-missing")

    [auth] = await client.list_registry_auths()
    assert (auth.id, auth.username, auth.password.get_secret_value()) == (
        "auth-registry-1",
        "robot",
        "fake-registry-password",
    )
    assert "fake-registry-password" not in repr(auth)


async def test_find_instance_by_name_is_exact_and_skips_removed(
    make_client: ClientFactory, novita: FakeNovitaHandle
) -> None:
    novita.set_step_seconds(None)
    client = make_client()
    web = await client.create_instance(create_request("web"))
    await client.create_instance(create_request("web-2"))
    found = await client.find_instance_by_name("web")
    assert found is not None and found.id == web
    assert await client.find_instance_by_name("we") is None

    await client.delete_instance(web)
    assert await client.find_instance_by_name("web") is None


# -- retries -------------------------------------------------------------------------------------------------------


async def test_429_waits_for_retry_after_then_succeeds(
    make_client: ClientFactory, novita: FakeNovitaHandle, manual_clock: ManualClock
) -> None:
    novita.add_faults({"path": "/clusters", "kind": "rate_limit", "retryAfter": 3, "count": 2})
    assert len(await make_client().list_clusters()) == 4
    assert manual_clock.sleeps == [3, 3]
    assert novita.call_count(*CLUSTERS) == 3


async def test_retry_after_is_capped_and_429_surfaces_when_retries_run_out(
    make_client: ClientFactory, novita: FakeNovitaHandle, manual_clock: ManualClock
) -> None:
    novita.add_faults({"path": "/clusters", "kind": "rate_limit", "retryAfter": 120, "count": None})
    with pytest.raises(NovitaRateLimited) as raised:
        await make_client(max_attempts=3, backoff_max_seconds=10).list_clusters()
    assert raised.value.retry_after == 120 and raised.value.status == 429
    assert raised.value.reason == "RATE_LIMIT_EXCEEDED"
    assert manual_clock.sleeps == [10, 10]
    assert novita.call_count(*CLUSTERS) == 3


async def test_5xx_is_retried_with_exponential_jittered_backoff(
    make_client: ClientFactory, novita: FakeNovitaHandle, manual_clock: ManualClock
) -> None:
    novita.add_faults({"path": "/clusters", "kind": "server_error", "status": 503, "count": 3})
    clusters = await make_client(max_attempts=4, backoff_base_seconds=1.0).list_clusters()
    assert len(clusters) == 4 and novita.call_count(*CLUSTERS) == 4
    first, second, third = manual_clock.sleeps
    assert 0.5 <= first <= 1 and 1 <= second <= 2 and 2 <= third <= 4


async def test_5xx_surfaces_as_unavailable_after_the_last_attempt(
    make_client: ClientFactory, novita: FakeNovitaHandle
) -> None:
    novita.add_faults({"path": "/clusters", "kind": "server_error", "status": 503, "count": None})
    with pytest.raises(NovitaUnavailable) as raised:
        await make_client(max_attempts=2).list_clusters()
    assert (raised.value.status, raised.value.reason) == (503, "UNKNOWN")
    assert novita.call_count(*CLUSTERS) == 2


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        (
            {"kind": "error", "status": 400, "reason": "VALIDATOR_PARAM", "message": "gpuNum is invalid"},
            NovitaBadRequest,
        ),
        ({"kind": "error", "status": 401, "reason": "FAILED_TO_AUTH", "message": "bad key"}, NovitaAuthError),
        ({"kind": "error", "status": 403, "reason": "FORBIDDEN", "message": "no"}, NovitaAuthError),
        ({"kind": "error", "status": 404, "reason": "RESOURCE_NOT_FOUND", "message": "not here"}, NovitaNotFound),
        ({"kind": "error", "status": 409, "reason": "CONFLICT", "message": "busy"}, NovitaStateConflict),
    ],
)
async def test_4xx_is_not_retried(
    make_client: ClientFactory,
    novita: FakeNovitaHandle,
    manual_clock: ManualClock,
    fault: dict[str, Any],
    expected: type[NovitaError],
) -> None:
    novita.add_faults({"path": "/clusters", "count": None, **fault})
    with pytest.raises(expected) as raised:
        await make_client().list_clusters()
    assert type(raised.value) is expected and raised.value.status == fault["status"]
    assert novita.call_count(*CLUSTERS) == 1 and manual_clock.sleeps == []


async def test_wrong_api_key_is_an_auth_error(make_client: ClientFactory, novita: FakeNovitaHandle) -> None:
    with pytest.raises(NovitaAuthError) as raised:
        await make_client(api_key="not-the-right-key-123").list_products()
    assert raised.value.status == 401 and "not-the-right-key-123" not in str(raised.value)
    assert novita.call_count("GET", "/products") == 1


async def test_timeouts_are_retried_then_surface_as_novita_timeout(
    make_client: ClientFactory, novita: FakeNovitaHandle
) -> None:
    novita.add_faults({"path": "/clusters", "kind": "timeout", "delaySeconds": 2, "count": None})
    with pytest.raises(NovitaTimeout) as raised:
        await make_client(timeout_seconds=0.2, max_attempts=2).list_clusters()
    assert raised.value.reason == "TIMEOUT"
    assert novita.call_count(*CLUSTERS) == 2


async def test_a_slow_answer_within_the_timeout_succeeds(make_client: ClientFactory, novita: FakeNovitaHandle) -> None:
    novita.add_faults({"path": "/clusters", "kind": "slow", "delaySeconds": 0.1})
    assert len(await make_client(timeout_seconds=1.0, max_attempts=1).list_clusters()) == 4


async def test_network_errors_are_retried(
    make_client: ClientFactory, novita: FakeNovitaHandle, manual_clock: ManualClock
) -> None:
    transport = RecordingTransport(manual_clock, fail_first=[httpx.ReadError("connection reset")])
    assert len(await make_client(transport=transport).list_clusters()) == 4
    assert len(transport.request_times) == 2 and novita.call_count(*CLUSTERS) == 1


# -- circuit breaker -----------------------------------------------------------------------------------------------


async def test_breaker_opens_fails_fast_and_closes_after_reset(
    make_client: ClientFactory, novita: FakeNovitaHandle, manual_clock: ManualClock
) -> None:
    client = make_client(max_attempts=1, breaker_failure_threshold=3, breaker_reset_seconds=30)
    novita.add_faults({"path": "*", "kind": "server_error", "count": None})
    for _ in range(3):
        with pytest.raises(NovitaUnavailable):
            await client.list_clusters()
    assert client.status().breaker_state == "open"

    with pytest.raises(NovitaCircuitOpen):
        await client.list_products()
    assert novita.call_count(*CLUSTERS) == 3 and novita.call_count("GET", "/products") == 0

    novita.clear_faults()
    manual_clock.advance(29)
    with pytest.raises(NovitaCircuitOpen):
        await client.list_clusters()
    manual_clock.advance(1)
    assert client.status().breaker_state == "half_open"
    assert len(await client.list_clusters()) == 4
    assert client.status().breaker_state == "closed" and client.status().consecutive_failures == 0
    assert novita.call_count(*CLUSTERS) == 4


async def test_failed_trial_reopens_the_breaker(
    make_client: ClientFactory, novita: FakeNovitaHandle, manual_clock: ManualClock
) -> None:
    client = make_client(max_attempts=1, breaker_failure_threshold=2, breaker_reset_seconds=10)
    novita.add_faults({"path": "/clusters", "kind": "server_error", "count": None})
    for _ in range(2):
        with pytest.raises(NovitaUnavailable):
            await client.list_clusters()
    manual_clock.advance(10)
    with pytest.raises(NovitaUnavailable) as trial:
        await client.list_clusters()
    assert not isinstance(trial.value, NovitaCircuitOpen)  # the trial call went out ...
    assert client.status().breaker_state == "open"  # ... failed, and the breaker opened again at once
    with pytest.raises(NovitaCircuitOpen):
        await client.list_clusters()
    assert novita.call_count(*CLUSTERS) == 3


async def test_4xx_answers_do_not_open_the_breaker(make_client: ClientFactory, novita: FakeNovitaHandle) -> None:
    client = make_client(breaker_failure_threshold=2)
    for _ in range(3):
        with pytest.raises(NovitaNotFound):
            await client.get_instance("0000000000000000")
    assert client.status().breaker_state == "closed"


# -- rate limiter --------------------------------------------------------------------------------------------------


async def test_rate_limiter_bounds_calls_per_second(make_client: ClientFactory, manual_clock: ManualClock) -> None:
    transport = RecordingTransport(manual_clock)
    client = make_client(rate_limit_per_second=5, rate_limit_burst=5, transport=transport)
    start = manual_clock.now
    for _ in range(20):
        await client.list_clusters()
    times = transport.request_times
    assert len(times) == 20
    # A bucket of 5 refilled at 5/s: the first 5 go at once, the 20th no sooner than 3 s later.
    assert times[4] == start and times[19] - start >= 3.0 - 1e-9
    for first_index, first_time in enumerate(times):
        in_window = [t for t in times[first_index:] if t < first_time + 1.0]
        assert len(in_window) <= 10, f"{len(in_window)} calls within 1 s from t={first_time - start}"


# -- error parsing -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "expected", "message_part"),
    [
        ({"kind": "html_error", "status": 502}, NovitaUnavailable, "502 Bad Gateway"),
        (
            {"kind": "error", "status": 400, "body": "upstream says no", "contentType": "text/plain"},
            NovitaBadRequest,
            "upstream says no",
        ),
        ({"kind": "error", "status": 400, "body": ""}, NovitaBadRequest, "empty body"),
        (
            {"kind": "error", "status": 400, "body": "[1, 2]", "contentType": "application/json"},
            NovitaBadRequest,
            "non-JSON",
        ),
        (
            {"kind": "error", "status": 400, "body": '{"code": 400}', "contentType": "application/json"},
            NovitaBadRequest,
            "without a message",
        ),
        (
            {
                "kind": "error",
                "status": 400,
                "body": '{"code": 400, "reason": "RESOURCE_NOT_FOUND"}',
                "contentType": "application/json",
            },
            NovitaNotFound,
            "without a message",
        ),
    ],
)
async def test_error_bodies_are_parsed_defensively(
    make_client: ClientFactory,
    novita: FakeNovitaHandle,
    fault: dict[str, Any],
    expected: type[NovitaError],
    message_part: str,
) -> None:
    novita.add_faults({"path": "/clusters", "count": None, **fault})
    with pytest.raises(expected) as raised:
        await make_client(max_attempts=1).list_clusters()
    assert message_part in raised.value.message
    assert "<" not in raised.value.message  # markup stripped from HTML pages


async def test_a_2xx_that_is_not_json_is_an_upstream_failure(
    make_client: ClientFactory, novita: FakeNovitaHandle
) -> None:
    novita.add_faults(
        {
            "path": "/clusters",
            "kind": "error",
            "status": 200,
            "body": "<html>login</html>",
            "contentType": "text/html",
            "count": None,
        }
    )
    with pytest.raises(NovitaUnavailable) as raised:
        await make_client(max_attempts=2).list_clusters()
    assert raised.value.reason == "INVALID_RESPONSE" and novita.call_count(*CLUSTERS) == 2


async def test_unknown_instance_is_not_found(make_client: ClientFactory, novita: FakeNovitaHandle) -> None:
    client = make_client()
    with pytest.raises(NovitaNotFound) as raised:
        await client.get_instance("ffffffffffffffff")
    assert (raised.value.status, raised.value.reason) == (400, "RESOURCE_NOT_FOUND")

    instance_id = await client.create_instance(create_request("vanishing"))
    novita.vanish(instance_id)
    with pytest.raises(NovitaNotFound):
        await client.stop_instance(instance_id)


async def test_invalid_state_change_is_a_state_conflict(make_client: ClientFactory, novita: FakeNovitaHandle) -> None:
    novita.set_step_seconds(0)
    client = make_client()
    instance_id = await client.create_instance(create_request("running-already"))
    with pytest.raises(NovitaStateConflict) as raised:
        await client.start_instance(instance_id)
    assert raised.value.status == 400 and "invalid state change" in str(raised.value)
    assert novita.call_count("POST", "/gpu/instance/start") == 1


async def test_insufficient_resource_is_typed_and_not_retried(
    make_client: ClientFactory, novita: FakeNovitaHandle
) -> None:
    client = make_client()
    with pytest.raises(NovitaInsufficientResource):
        await client.create_instance(create_request("sold-out", product_id=SOLD_OUT_4090))
    novita.add_faults({"path": "/gpu/instance/create", "kind": "insufficient_resource"})
    with pytest.raises(NovitaInsufficientResource) as raised:
        await client.create_instance(create_request("injected"))
    assert raised.value.reason == "INSUFFICIENT_RESOURCE"
    assert novita.call_count(*CREATE) == 2 and novita.instances() == []


# -- create without duplicates -------------------------------------------------------------------------------------


@pytest.mark.parametrize("lost_how", [{"status": 500}, {"delaySeconds": 1.0}], ids=["500", "hang"])
async def test_lost_create_answer_returns_the_one_instance(
    make_client: ClientFactory, novita: FakeNovitaHandle, lost_how: dict[str, Any]
) -> None:
    novita.add_faults({"path": "/gpu/instance/create", "kind": "lost_response", **lost_how})
    instance_id = await make_client(timeout_seconds=0.3).create_instance(create_request("paid-once"))
    [upstream] = novita.instances(name="paid-once")
    assert instance_id == upstream["id"]
    assert novita.call_count(*CREATE) == 1 and novita.call_count(*LIST) >= 1


async def test_create_is_resent_only_when_the_name_provably_does_not_exist(
    make_client: ClientFactory, novita: FakeNovitaHandle
) -> None:
    # The first create hangs without acting: the lookup finds nothing, so the create goes out again.
    novita.add_faults({"path": "/gpu/instance/create", "kind": "timeout", "delaySeconds": 1.0})
    instance_id = await make_client(timeout_seconds=0.3).create_instance(create_request("second-try"))
    [upstream] = novita.instances(name="second-try")
    assert instance_id == upstream["id"]
    assert novita.call_count(*CREATE) == 2 and novita.call_count(*LIST) == 1


async def test_create_that_never_left_is_resent_without_lookup(
    make_client: ClientFactory, novita: FakeNovitaHandle, manual_clock: ManualClock
) -> None:
    transport = RecordingTransport(manual_clock, fail_first=[httpx.ConnectError("connection refused")])
    instance_id = await make_client(transport=transport).create_instance(create_request("not-sent"))
    assert [instance["id"] for instance in novita.instances(name="not-sent")] == [instance_id]
    assert novita.call_count(*CREATE) == 1 and novita.call_count(*LIST) == 0


async def test_create_outcome_unknown_when_the_lookup_fails_too(
    make_client: ClientFactory, novita: FakeNovitaHandle
) -> None:
    novita.add_faults(
        {"path": "/gpu/instance/create", "kind": "lost_response"},
        {"path": "/gpu/instances", "kind": "server_error", "count": None},
    )
    with pytest.raises(NovitaCreateOutcomeUnknown):
        await make_client(max_attempts=2).create_instance(create_request("unknown"))
    assert novita.call_count(*CREATE) == 1  # never re-sent without proof
    assert len(novita.instances(name="unknown")) == 1


async def test_create_is_not_retried_on_4xx(make_client: ClientFactory, novita: FakeNovitaHandle) -> None:
    with pytest.raises(NovitaBadRequest) as raised:
        await make_client().create_instance(create_request("bad-product", product_id="no-such-product"))
    assert raised.value.reason == "VALIDATOR_PARAM" and "productId" in raised.value.message
    assert novita.call_count(*CREATE) == 1 and novita.call_count(*LIST) == 0


def test_create_request_validates_ports_before_sending() -> None:
    with pytest.raises(ValueError, match="reserved"):
        create_request("ssh-port", ports="2222/tcp")
    with pytest.raises(ValueError, match="must look like"):
        create_request("bad-port", ports="80/udp")
    assert create_request("ok", ports=" 80/http , 22/tcp").ports == "80/http,22/tcp"


# -- secrets, status, metrics --------------------------------------------------------------------------------------


async def test_api_key_never_appears_in_errors_or_logs(
    make_client: ClientFactory, novita: FakeNovitaHandle, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    key = novita.api_key
    novita.add_faults(
        {"path": "/clusters", "kind": "error", "status": 400, "message": f"bad token Bearer {key}"},
        {"path": "/products", "kind": "server_error", "message": f"backend rejected {key}", "count": None},
        {"path": "/gpu/instance", "kind": "timeout", "delaySeconds": 1.0, "count": None},
        {
            "path": "/templates",
            "kind": "error",
            "status": 401,
            "body": f"<h1>denied {key}</h1>",
            "contentType": "text/html",
        },
    )
    client = make_client(max_attempts=2, timeout_seconds=0.2)
    errors: list[NovitaError] = []
    for call in (client.list_clusters, client.list_products, lambda: client.get_instance("x"), client.list_templates):
        with pytest.raises(NovitaError) as raised:
            await call()
        errors.append(raised.value)
    assert [type(error) for error in errors] == [NovitaBadRequest, NovitaUnavailable, NovitaTimeout, NovitaAuthError]
    assert "***" in errors[0].message
    for error in errors:
        assert key not in str(error) and key not in repr(error) and key not in error.message
    assert caplog.records, "the retries should have been logged"
    for record in caplog.records:
        assert key not in record.getMessage()
        assert key not in repr(record.__dict__)
    assert key not in repr(client.status())


async def test_status_and_metrics_report_recent_calls(make_client: ClientFactory, novita: FakeNovitaHandle) -> None:
    client = make_client(max_attempts=2)
    fresh = client.status()
    assert (fresh.breaker_state, fresh.calls, fresh.errors, fresh.last_success_at) == ("closed", 0, 0, None)
    attempts_before = metric("novita_calls_total", "list_clusters", "server_error")
    errors_before = metric("novita_errors_total", "list_clusters", "unavailable")

    novita.add_faults({"path": "/clusters", "kind": "server_error", "status": 502, "count": None})
    with pytest.raises(NovitaUnavailable):
        await client.list_clusters()
    failed = client.status()
    assert (failed.calls, failed.errors, failed.consecutive_failures) == (2, 2, 2)
    assert failed.last_error_reason == "UNKNOWN" and failed.last_failure_at is not None
    assert metric("novita_calls_total", "list_clusters", "server_error") - attempts_before == 2
    assert metric("novita_errors_total", "list_clusters", "unavailable") - errors_before == 1

    novita.clear_faults()
    await client.list_clusters()
    recovered = client.status()
    assert recovered.last_success_at is not None and recovered.last_success_at >= failed.last_failure_at
    assert (recovered.calls, recovered.errors, recovered.consecutive_failures) == (3, 2, 0)


async def test_an_answer_of_the_wrong_shape_is_an_upstream_failure_without_its_values(
    make_client: ClientFactory, novita: FakeNovitaHandle
) -> None:
    body = '{"instances": [{"name": "no-id", "connectComponentSSH": {"password": "leaky-ssh-password"}}]}'
    novita.add_faults(
        {"path": "/gpu/instances", "kind": "error", "status": 200, "body": body, "contentType": "application/json"}
    )
    with pytest.raises(NovitaUnavailable) as raised:
        await make_client().list_instances()
    assert raised.value.reason == "INVALID_RESPONSE" and "id (missing)" in raised.value.message
    assert "leaky-ssh-password" not in str(raised.value)
