"""GET /api/products and GET /api/regions over real HTTP: ordering, filters, caching, auth and upstream errors."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.app.conftest import ApiServer, StartServer
from tests.fakes.fixtures import FakeNovitaHandle
from tests.fakes.novita import CLUSTERS, PRODUCTS

PRODUCTS_PATH = "GET /products"


def _products(server: ApiServer, **params: str) -> list[dict]:
    with server.client() as client:
        response = client.get("/api/products", params=params)
    assert response.status_code == 200, response.text
    return response.json()["items"]


def test_products_come_available_first_then_cheapest(api_server: ApiServer) -> None:
    items = _products(api_server)

    assert {p["id"] for p in items} == {p["id"] for p in PRODUCTS}
    availability = [p["available"] for p in items]
    assert availability == sorted(availability, reverse=True), "available products must come first"
    available_prices = [p["price"] for p in items if p["available"]]
    assert available_prices == sorted(available_prices)
    assert items[0]["id"] == "5090-as-sgp-2"  # the cheapest deployable on demand in the fake's catalogue
    assert items[0]["onDemandPrice"] == 63000 and items[0]["regions"] == ["AS-SGP-02 (Singapore)"]


def test_gpu_name_and_region_filters(api_server: ApiServer) -> None:
    items = _products(api_server, gpuName="rtx 4090")
    assert [p["id"] for p in items] == ["4090-us-ca-6", "4090-as-sgp-2", "4090-eu-de-1"]

    in_germany = _products(api_server, gpuName="4090", region="eu-de-1")
    assert [p["id"] for p in in_germany] == ["4090-eu-de-1"]
    assert in_germany[0]["available"] is False


def test_gpu_num_filter_keeps_products_with_enough_free_gpus(api_server: ApiServer) -> None:
    items = _products(api_server, gpuName="H100", gpuNum="6")

    assert [p["id"] for p in items] == ["h100-eu-de-1"]  # us-ca-6 has only 4 H100s free


def test_spot_mode_prices_by_spot_price_and_drops_products_without_spot(api_server: ApiServer) -> None:
    items = _products(api_server, billingMode="spot")

    ids = [p["id"] for p in items]
    assert "h100-eu-de-1" not in ids and "a100-cn-hongkong-1" not in ids  # sold on demand/monthly only
    assert items[0]["id"] == "5090-as-sgp-2" and items[0]["price"] == 32000
    assert all(p["price"] == p["spotPrice"] for p in items)


def test_products_are_cached_per_query(api_server: ApiServer, fake_novita: FakeNovitaHandle) -> None:
    _products(api_server)
    _products(api_server, gpuName="H100")  # same upstream query, filtered locally
    assert fake_novita.call_count("GET", "/products") == 1

    _products(api_server, billingMode="spot")
    assert fake_novita.call_count("GET", "/products") == 2


def test_concurrent_misses_make_one_upstream_call(api_server: ApiServer, fake_novita: FakeNovitaHandle) -> None:
    fake_novita.add_faults({"path": "/products", "kind": "slow", "delaySeconds": 0.5, "count": None})

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda _: _products(api_server, region="us-ca-6"), range(8)))

    assert all(r == results[0] for r in results) and results[0]
    assert fake_novita.call_count("GET", "/products") == 1


def test_regions_list_novita_clusters_and_are_cached(api_server: ApiServer, fake_novita: FakeNovitaHandle) -> None:
    with api_server.client() as client:
        first = client.get("/api/regions")
        second = client.get("/api/regions")

    assert first.status_code == 200 and second.json() == first.json()
    regions = {r["id"]: r for r in first.json()["items"]}
    assert set(regions) == {c["id"] for c in CLUSTERS}
    assert regions["us-ca-6"] == {
        "id": "us-ca-6",
        "name": "US-CA-06 (California)",
        "availableGpuTypes": ["RTX 4090 24GB", "H100 SXM 80GB"],
        "supportsNetworkStorage": True,
        "supportsInstanceNetwork": True,
    }
    assert fake_novita.call_count("GET", "/clusters") == 1


@pytest.mark.parametrize("path", ["/api/products", "/api/regions"])
def test_api_key_is_required(api_server: ApiServer, path: str) -> None:
    with api_server.client(authenticated=False) as client:
        missing = client.get(path)
        wrong = client.get(path, headers={"X-API-Key": "not-the-key-0123456789"})

    for response in (missing, wrong):
        assert response.status_code == 401
        assert response.headers["content-type"].startswith("application/problem+json")


def test_bad_billing_mode_is_a_422_naming_the_parameter(api_server: ApiServer) -> None:
    with api_server.client() as client:
        response = client.get("/api/products", params={"billingMode": "hourly"})

    assert response.status_code == 422
    assert [e["field"] for e in response.json()["errors"]] == ["query.billingMode"]


@pytest.mark.parametrize(
    ("fault", "status", "reason"),
    [
        ({"kind": "rate_limit", "retryAfter": 1}, 429, "RATE_LIMIT_EXCEEDED"),
        ({"kind": "server_error"}, 502, None),
        (
            {"kind": "error", "status": 401, "reason": "FAILED_TO_AUTH", "message": "failed to authenticate"},
            502,
            "FAILED_TO_AUTH",
        ),
        ({"kind": "timeout", "delaySeconds": 2}, 504, "TIMEOUT"),
    ],
    ids=["429", "5xx", "auth", "timeout"],
)
def test_upstream_errors_map_to_gateway_answers_with_the_novita_reason(
    api_server_factory: StartServer, fake_novita: FakeNovitaHandle, fault: dict, status: int, reason: str | None
) -> None:
    server = api_server_factory(novita_timeout_seconds=0.3, novita_max_attempts=1)
    fake_novita.add_faults({"path": "/products", "count": None, **fault})

    with server.client() as client:
        response = client.get("/api/products")

    assert response.status_code == status, response.text
    body = response.json()
    assert response.headers["content-type"].startswith("application/problem+json")
    assert body["status"] == status and body["detail"].startswith("Novita")
    if reason is not None:
        assert body["reason"] == reason
    if status == 429:
        assert response.headers["retry-after"] == "1"
    assert fake_novita.api_key not in response.text


def test_open_circuit_answers_503(api_server_factory: StartServer, fake_novita: FakeNovitaHandle) -> None:
    server = api_server_factory(novita_max_attempts=1, novita_breaker_failure_threshold=1)
    fake_novita.add_faults({"path": "/clusters", "kind": "server_error", "count": 1})

    with server.client() as client:
        first = client.get("/api/regions")
        second = client.get("/api/regions")

    assert first.status_code == 502
    assert second.status_code == 503 and second.json()["reason"] == "CIRCUIT_OPEN"
    assert fake_novita.call_count("GET", "/clusters") == 1  # the breaker answered without calling Novita
