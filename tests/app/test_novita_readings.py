"""The Novita client is right under every reading of Novita's docs (reference section 2), against the fake over HTTP.

- Listing: pages counted from 0 or from 1 (page 0 answered as page 1, or empty), `total` as a number, a string or
  absent, and a server-side page cap below the size asked for. Every paging and lookup test runs under both bases.
- Errors: only Novita's `*_NOT_FOUND` reason means "gone"; a bare 404 is an upstream fault (retried, counted by the
  breaker, never a deletion, also not by reconciliation); `INVALID_USER_TOKEN`/`BANNED_USER` (HTTP 400) are auth
  errors that are not retried; capacity-like reasons are `NovitaInsufficientResource`.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from app.fleet.schemas import InstanceState
from app.lifecycle.activity import ActivityStore
from app.lifecycle.reconcile import Reconciler
from app.novita import (
    CreateInstanceRequest,
    NovitaAuthError,
    NovitaClient,
    NovitaInsufficientResource,
    NovitaNotFound,
    NovitaUnavailable,
)
from tests.app.lifecycle_helpers import LifecycleEnv, RecordingSink, managed_instance
from tests.fakes.fixtures import FakeNovitaHandle, ManualClock

LIST = ("GET", "/gpu/instances")
GET = ("GET", "/gpu/instance")
CREATE = ("POST", "/gpu/instance/create")
PAGE_SIZE = 3

# Both bases; a 1-based server may answer page 0 as page 1 or as nothing.
BASES = [
    pytest.param({"pageBase": 0}, id="0-based"),
    pytest.param({"pageBase": 1, "pageZero": "first"}, id="1-based,page0=page1"),
    pytest.param({"pageBase": 1, "pageZero": "empty"}, id="1-based,page0-empty"),
]
# How the server shapes a page: `total` as documented, as a string, absent; a cap below the size asked for.
SHAPES = [
    pytest.param({"total": "int"}, id="total-int"),
    pytest.param({"total": "string"}, id="total-string"),
    pytest.param({"total": "absent"}, id="no-total"),
    pytest.param({"total": "absent", "pageCap": 2}, id="no-total,cap2"),
    pytest.param({"total": "string", "pageCap": 2}, id="total-string,cap2"),
]

ClientFactory = Callable[..., NovitaClient]


@pytest.fixture
async def make_client(novita: FakeNovitaHandle, manual_clock: ManualClock) -> AsyncIterator[ClientFactory]:
    clients: list[NovitaClient] = []

    def factory(**overrides: Any) -> NovitaClient:
        arguments: dict[str, Any] = {
            "base_url": novita.base_url,
            "api_key": novita.api_key,
            "timeout_seconds": 2.0,
            "page_size": PAGE_SIZE,
            "rate_limit_per_second": 1000.0,
            "clock": manual_clock.as_clock(),
            "rng": random.Random(7),
        }
        clients.append(NovitaClient(**{**arguments, **overrides}))
        return clients[-1]

    yield factory
    for client in clients:
        await client.aclose()


def create_request(name: str, **fields: Any) -> CreateInstanceRequest:
    return CreateInstanceRequest(
        name=name,
        product_id="4090-us-ca-6",
        gpu_num=1,
        rootfs_size=50,
        image_url="docker.io/library/ubuntu:22.04",
        **fields,
    )


async def create_many(client: NovitaClient, prefix: str, count: int) -> list[str]:
    return [await client.create_instance(create_request(f"{prefix}-{number}")) for number in range(count)]


# -- listing -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("base", BASES)
async def test_listing_reads_every_instance_once_under_every_reading(
    make_client: ClientFactory, novita: FakeNovitaHandle, base: dict[str, Any], shape: dict[str, Any]
) -> None:
    client = make_client()
    created = await create_many(client, "paged", 8)
    await client.create_instance(create_request("other"))
    novita.configure(**base, **shape)

    listed = await client.list_instances(name="paged")

    assert sorted(instance.id for instance in listed) == sorted(created)  # none skipped, none twice
    assert len(await client.list_instances()) == 9
    # Bounded: at most the pages holding the items, plus page 0 and a final empty page.
    page_size = shape.get("pageCap", PAGE_SIZE)
    assert novita.call_count(*LIST) <= 2 * (-(-9 // page_size) + 2)


@pytest.mark.parametrize("base", BASES)
async def test_an_empty_account_lists_nothing(
    make_client: ClientFactory, novita: FakeNovitaHandle, base: dict[str, Any]
) -> None:
    novita.configure(**base, total="absent")
    assert await make_client().list_instances() == []
    assert novita.call_count(*LIST) == 2  # page 0 alone cannot tell "empty" from "1-based": page 1 is asked too


@pytest.mark.parametrize("base", BASES)
async def test_templates_are_listed_completely(
    make_client: ClientFactory, novita: FakeNovitaHandle, base: dict[str, Any]
) -> None:
    novita.configure(**base, total="absent", pageCap=1)
    templates = await make_client(page_size=2).list_templates()
    assert [template.id for template in templates] == ["tpl-pytorch", "tpl-private", "tpl-ubuntu"]


async def test_listing_stops_when_the_server_ignores_page_num() -> None:
    requests: list[httpx.Request] = []

    def same_page_every_time(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(200, json={"instances": [{"id": f"i{n}", "name": "x"} for n in range(2)]})

    client = NovitaClient(
        "http://novita.test/v1", "key", page_size=2, transport=httpx.MockTransport(same_page_every_time)
    )
    try:
        assert [instance.id for instance in await client.list_instances()] == ["i0", "i1"]
    finally:
        await client.aclose()
    assert [request.url.params["pageNum"] for request in requests] == ["0", "1", "2"]
    assert {request.url.params["pageSize"] for request in requests} == {"2"}


# -- lookups by name (what keeps a create from running twice) ------------------------------------------------------


@pytest.mark.parametrize("base", BASES)
async def test_lookup_by_name_finds_an_instance_on_any_page(
    make_client: ClientFactory, novita: FakeNovitaHandle, base: dict[str, Any]
) -> None:
    client = make_client()
    ids = await create_many(client, "box", 7)
    novita.configure(**base, total="absent", pageCap=2)
    for number in (0, 6):  # on the first page and on the last one, under both bases
        found = await client.find_instance_by_name(f"box-{number}")
        assert found is not None and found.id == ids[number]
    assert await client.find_instance_by_name("box-7") is None


@pytest.mark.parametrize("base", BASES)
async def test_a_lost_create_answer_is_settled_by_the_lookup_without_a_duplicate(
    make_client: ClientFactory, novita: FakeNovitaHandle, base: dict[str, Any]
) -> None:
    client = make_client()
    await create_many(client, "crowd", 6)  # the lost instance lands on a later page
    novita.configure(**base, total="string", pageCap=2)
    novita.add_faults({"path": "/gpu/instance/create", "kind": "lost_response", "status": 500})

    instance_id = await client.create_instance(create_request("crowd-lost"))

    assert [instance["id"] for instance in novita.instances("crowd-lost")] == [instance_id]
    assert novita.call_count(*CREATE) == 7


# -- what a 404 means ----------------------------------------------------------------------------------------------


async def test_a_bare_404_is_an_upstream_fault_retried_and_counted_by_the_breaker(
    make_client: ClientFactory, novita: FakeNovitaHandle
) -> None:
    client = make_client(max_attempts=3, breaker_failure_threshold=3)
    instance_id = await client.create_instance(create_request("behind-a-proxy"))
    novita.add_faults({"path": "/gpu/instance", "kind": "bare_404", "count": None})

    with pytest.raises(NovitaUnavailable) as raised:
        await client.get_instance(instance_id)

    assert not isinstance(raised.value, NovitaNotFound)
    assert raised.value.status == 404 and raised.value.reason == "UNROUTED_404"
    assert novita.call_count(*GET) == 3  # retried like a 5xx
    status = client.status()
    assert status.breaker_state == "open" and status.last_error_reason == "UNROUTED_404"


@pytest.mark.parametrize(
    ("fault", "gone"),
    [
        pytest.param({"kind": "error", "status": 404, "reason": "RESOURCE_NOT_FOUND"}, True, id="404-RESOURCE"),
        pytest.param({"kind": "error", "status": 400, "reason": "INSTANCE_NOT_FOUND"}, True, id="400-INSTANCE"),
        pytest.param(
            {"kind": "error", "status": 404, "reason": "NOT_FOUND", "message": "no route"}, False, id="404-route-reason"
        ),
        pytest.param(
            {"kind": "error", "status": 404, "body": "<html>404</html>", "contentType": "text/html"},
            False,
            id="404-html",
        ),
        pytest.param({"kind": "error", "status": 404, "body": ""}, False, id="404-empty"),
        pytest.param({"kind": "bare_404"}, False, id="404-plain-text"),
        pytest.param(
            {"kind": "error", "status": 200, "body": "{}", "contentType": "application/json"},
            False,
            id="200-without-an-instance",
        ),
    ],
)
async def test_only_a_novita_not_found_reason_means_gone(
    make_client: ClientFactory, novita: FakeNovitaHandle, fault: dict[str, Any], gone: bool
) -> None:
    novita.add_faults({"path": "/gpu/instance", "count": None, **fault})
    with pytest.raises(NovitaNotFound if gone else NovitaUnavailable) as raised:
        await make_client(max_attempts=1).get_instance("0123456789abcdef")
    assert isinstance(raised.value, NovitaNotFound) == gone


async def test_reconciliation_never_marks_a_record_deleted_on_a_bare_404(lifecycle_env: LifecycleEnv) -> None:
    env, sink = lifecycle_env, RecordingSink()
    record = await managed_instance(env, status="running")
    assert record.novita_instance_id is not None
    env.fake.vanish(record.novita_instance_id)  # missing from the list, and every direct lookup hits a wrong route
    env.fake.add_faults({"path": "/gpu/instance", "kind": "bare_404", "count": None})
    reconciler = Reconciler(
        env.novita, env.store, env.redis, ActivityStore(env.redis), sink, lease_seconds=30, clock=env.clock
    )

    report = await reconciler.run()

    assert report is not None and report.vanished == []
    stored = await env.store.get(record.id)
    assert stored is not None and stored.state == InstanceState.RUNNING and sink.types() == []

    # The same instance, reported gone by Novita's own error body, is marked.
    env.fake.clear_faults()
    report = await reconciler.run()
    assert report is not None and report.vanished == [record.id]


# -- auth and capacity reasons -------------------------------------------------------------------------------------


@pytest.mark.parametrize("refusal", ["INVALID_USER_TOKEN", "BANNED_USER"])
async def test_auth_reasons_sent_as_400_are_auth_errors_and_not_retried(
    make_client: ClientFactory, novita: FakeNovitaHandle, manual_clock: ManualClock, refusal: str
) -> None:
    novita.configure(keyRefusal=refusal)
    client = make_client(api_key="a-key-novita-refuses", max_attempts=4)
    with pytest.raises(NovitaAuthError) as raised:
        await client.list_clusters()
    assert (raised.value.status, raised.value.reason) == (400, refusal)
    assert novita.call_count("GET", "/clusters") == 1 and manual_clock.sleeps == []
    assert client.status().last_error_reason == refusal  # what /health reports


@pytest.mark.parametrize(
    "reason",
    ["CREATE_GPU_NUM_LIMIT", "CUDA_VERSION_INCOMPATIBLE", "CLUSTER_STATUS", "NODE_STATUS", "INSUFFICIENT_RESOURCE"],
)
async def test_capacity_like_reasons_are_insufficient_resource(
    make_client: ClientFactory, novita: FakeNovitaHandle, reason: str
) -> None:
    novita.add_faults({"path": "/gpu/instance/create", "kind": "error", "status": 400, "reason": reason})
    with pytest.raises(NovitaInsufficientResource) as raised:
        await make_client().create_instance(create_request("somewhere-else"))
    assert raised.value.reason == reason and novita.call_count(*CREATE) == 1


async def test_create_sends_the_optional_fields_in_novitas_shapes(
    make_client: ClientFactory, novita: FakeNovitaHandle
) -> None:
    client = make_client()
    instance_id = await client.create_instance(
        create_request(
            "full",
            entrypoint="/bin/sh -c",
            min_cuda_version="12.2",
            image_auth="robot:s3cret-pass",
            tools=[{"name": "Jupyter", "port": "8888", "type": "http"}],
            network_storages=[{"Id": "ns-1", "mountPoint": "/data"}],
        )
    )
    [created] = [instance for instance in novita.instances() if instance["id"] == instance_id]
    assert created["received"] == {
        "entrypoint": "/bin/sh -c",
        "minCudaVersion": "12.2",
        "tools": [{"name": "Jupyter", "port": "8888", "type": "http"}],
        "networkStorages": [{"Id": "ns-1", "mountPoint": "/data"}],
        "imageAuthSent": True,
    }
    with pytest.raises(NovitaInsufficientResource) as raised:  # these nodes have CUDA 12.4
        await client.create_instance(create_request("too-new", min_cuda_version="12.8"))
    assert raised.value.reason == "CUDA_VERSION_INCOMPATIBLE"
