"""Placement against the fake Novita's catalogue (through the real, Valkey-cached ProductService): cheapest available
offer by region order, INSUFFICIENT_RESOURCE moves on, templates and registry auths resolved before create."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypedDict

import pytest

from app.core.cache import Cache
from app.core.config import Settings
from app.core.metrics import Metrics
from app.lifecycle.placement import BillingMode, NoCapacity, Offer, Placement, PlacementError, PlacementRequest
from app.novita.models import CreateInstanceRequest
from app.products.service import ProductService
from tests.app.lifecycle_helpers import LifecycleEnv

CREATE = "/gpu/instance/create"


class LaunchArguments(TypedDict, total=False):
    """The `resolve_launch` keywords the refusal cases set."""

    template_id: str
    image_url: str
    image_auth: str


def placement(env: LifecycleEnv, region_order: tuple[str, ...] = ()) -> Placement:
    settings = Settings(redis_url=env.redis_server.url, novita_api_key="unused")
    catalog = ProductService(settings, env.novita, Cache(env.redis_manager, Metrics()))
    return Placement(catalog, env.novita, region_order=region_order)


def request(
    gpu_name: str = "RTX 4090 24GB",
    *,
    gpu_num: int = 1,
    billing_mode: BillingMode = "onDemand",
    cluster_ids: Sequence[str] = (),
) -> PlacementRequest:
    return PlacementRequest(gpu_num=gpu_num, billing_mode=billing_mode, gpu_name=gpu_name, cluster_ids=cluster_ids)


def build(name: str = "trainer-0123456789abcdef") -> Callable[[Offer], CreateInstanceRequest]:
    def to_request(offer: Offer) -> CreateInstanceRequest:
        return CreateInstanceRequest(
            name=name,
            product_id=offer.product_id,
            cluster_id=offer.cluster_id,
            gpu_num=1,
            rootfs_size=20,
            image_url="docker.io/library/ubuntu:22.04",
        )

    return to_request


async def test_cheapest_available_first_when_no_region_is_preferred(lifecycle_env: LifecycleEnv) -> None:
    offers = (await placement(lifecycle_env).plan(request())).offers
    # eu-de-1 has RTX 4090s but none available; cn-hongkong-1 has none at all.
    assert [(o.cluster_id, o.product_id, o.price) for o in offers] == [
        ("us-ca-6", "4090-us-ca-6", 67000),
        ("as-sgp-2", "4090-as-sgp-2", 69000),
    ]


async def test_the_configured_region_order_comes_before_price(lifecycle_env: LifecycleEnv) -> None:
    plan = await placement(lifecycle_env, ("as-sgp-2", "eu-de-1", "retired-cluster")).plan(request())
    assert [o.cluster_id for o in plan.offers] == ["as-sgp-2", "us-ca-6"]
    assert [note.where for note in plan.unavailable] == ["eu-de-1"]  # preferred but empty; others go unmentioned


async def test_requested_clusters_are_the_only_candidates_in_their_order(lifecycle_env: LifecycleEnv) -> None:
    plan = await placement(lifecycle_env).plan(request(cluster_ids=["eu-de-1", "as-sgp-2"]))
    assert [o.cluster_id for o in plan.offers] == ["as-sgp-2"]
    assert [str(note) for note in plan.unavailable] == ["eu-de-1: no available 'RTX 4090 24GB'"]


async def test_gpu_count_and_billing_mode_filter_the_offers(lifecycle_env: LifecycleEnv) -> None:
    eight = (await placement(lifecycle_env).plan(request("H100 SXM 80GB", gpu_num=8))).offers
    assert [o.product_id for o in eight] == ["h100-eu-de-1"]  # us-ca-6 has only 4 free
    spot = (await placement(lifecycle_env).plan(request("H100 SXM 80GB", billing_mode="spot"))).offers
    assert [(o.product_id, o.price) for o in spot] == [("h100-us-ca-6", 73000)]


async def test_unknown_clusters_are_named(lifecycle_env: LifecycleEnv) -> None:
    with pytest.raises(PlacementError, match=r"unknown cluster ids \['mars-1'\]"):
        await placement(lifecycle_env).plan(request(cluster_ids=["us-ca-6", "mars-1"]))


async def test_insufficient_resource_moves_to_the_next_offer(lifecycle_env: LifecycleEnv) -> None:
    env = lifecycle_env
    place = placement(env)
    plan = await place.plan(request())
    env.fake.add_faults({"path": CREATE, "kind": "insufficient_resource", "count": 1})

    placed = await place.create(plan, build())

    assert placed.offer.cluster_id == "as-sgp-2"
    assert [(note.kind, note.where) for note in placed.skipped] == [("insufficient_resource", "us-ca-6")]
    [created] = env.fake.instances("trainer-0123456789abcdef")
    assert created["id"] == placed.novita_instance_id and created["clusterId"] == "as-sgp-2"
    assert env.fake.call_count("POST", CREATE) == 2  # the full cluster was not retried


async def test_no_capacity_anywhere_lists_what_was_tried(lifecycle_env: LifecycleEnv) -> None:
    env = lifecycle_env
    place = placement(env)
    plan = await place.plan(request(cluster_ids=["us-ca-6", "eu-de-1", "as-sgp-2"]))
    env.fake.add_faults({"path": CREATE, "kind": "insufficient_resource", "count": None})

    with pytest.raises(NoCapacity) as raised:
        await place.create(plan, build())

    assert [(note.kind, note.where) for note in raised.value.skipped] == [
        ("no_product", "eu-de-1"),
        ("insufficient_resource", "us-ca-6"),
        ("insufficient_resource", "as-sgp-2"),
    ]
    assert "eu-de-1: no available 'RTX 4090 24GB'" in str(raised.value)
    assert env.fake.instances() == [] and env.fake.call_count("POST", CREATE) == 2


async def test_templates_and_registry_auths_are_resolved_before_create(lifecycle_env: LifecycleEnv) -> None:
    place = placement(lifecycle_env)
    spec = await place.resolve_launch(template_id="tpl-private", envs={"MODE": "serve"})
    assert (spec.image_url, spec.image_auth_id, spec.ports, spec.command) == (
        "registry.example.com/team/infer:1.0",
        "auth-registry-1",
        "8000/http",
        "serve",
    )
    assert spec.envs == {"MODE": "serve"}

    own = await place.resolve_launch(
        template_id="tpl-pytorch",
        image_url="docker.io/me/app:1",
        ports="80/http",
        image_auth="example-registry",
        envs={"JUPYTER_TOKEN": "mine"},
    )
    assert (own.image_url, own.ports, own.image_auth_id) == ("docker.io/me/app:1", "80/http", "auth-registry-1")
    assert own.envs == {"JUPYTER_TOKEN": "mine"}


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [
        ({"template_id": "tpl-missing"}, "template 'tpl-missing' does not exist"),
        ({"image_url": "docker.io/x:1", "image_auth": "nobody"}, "registry auth 'nobody' does not exist"),
        ({}, "no image"),
    ],
)
async def test_unresolvable_launch_specs_are_refused_with_the_reason(
    lifecycle_env: LifecycleEnv, arguments: LaunchArguments, problem: str
) -> None:
    with pytest.raises(PlacementError, match=problem):
        await placement(lifecycle_env).resolve_launch(**arguments)
    assert lifecycle_env.fake.call_count("POST", CREATE) == 0
