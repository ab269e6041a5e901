"""Placement: which product in which cluster to create an instance on, and what to launch there.

Offers are ordered by region preference, then price:
- clusters named in the request are tried in the request's order, and only those;
- otherwise the configured region order (`region_order`, e.g. ["us-ca-6", "as-sgp-2"]) comes first, then every other
  cluster Novita lists, cheapest offer first.
In each cluster the offer is the cheapest product of that GPU name that can be deployed now with enough GPUs
(`ProductService.cheapest_available`, cached). Region ids come from Novita's `/clusters`, never from a table here.
`create()` walks the offers; `INSUFFICIENT_RESOURCE` moves to the next one instead of retrying the same. Clusters
without an offer and offers without capacity are reported as `Skipped` notes, for the record's events.
Templates (image, ports, envs, start command) and registry auths are resolved before any create is sent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from app.novita.client import NovitaClient
from app.novita.errors import NovitaInsufficientResource, NovitaNotFound
from app.novita.models import CreateInstanceRequest
from app.products.service import ProductView, RegionView

logger = logging.getLogger(__name__)

BillingMode = Literal["onDemand", "spot", "monthly"]


class PlacementError(ValueError):
    """The request cannot be placed as asked (unknown cluster, template or registry auth); the message says which."""


@dataclass(frozen=True)
class Skipped:
    """A cluster passed over: `no_product` (nothing deployable there) or `insufficient_resource` (create refused)."""

    kind: Literal["no_product", "insufficient_resource"]
    where: str  # the cluster id, or "any cluster"
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


class NoCapacity(PlacementError):
    """No offer had capacity; `skipped` says, per cluster, why."""

    def __init__(self, skipped: list[Skipped]) -> None:
        super().__init__("no capacity: " + ("; ".join(map(str, skipped)) or "no available product matches"))
        self.skipped = skipped


class ProductCatalog(Protocol):
    """Products and regions; `app.products.service.ProductService` is the real one (cached on Valkey)."""

    async def cheapest_available(
        self, product_name: str, cluster_id: str | None, billing_mode: BillingMode, gpu_num: int
    ) -> ProductView | None:
        """The cheapest deployable product of that exact name in the cluster, or None."""
        ...

    async def list_regions(self) -> list[RegionView]:
        """Novita's clusters."""
        ...


@dataclass(frozen=True)
class PlacementRequest:
    """What to place: a product by GPU name (or a fixed product id), how many GPUs, where, how billed."""

    gpu_num: int
    billing_mode: BillingMode
    gpu_name: str | None = None
    product_id: str | None = None
    cluster_ids: Sequence[str] = ()


@dataclass(frozen=True)
class Offer:
    """One candidate: a product in a cluster (None: Novita picks the cluster) at a price (raw Novita units)."""

    product_id: str
    cluster_id: str | None
    price: float | None = None


@dataclass(frozen=True)
class PlacementPlan:
    """Offers in the order to try them, and the clusters considered that had none."""

    offers: list[Offer]
    unavailable: list[Skipped] = field(default_factory=list)


@dataclass(frozen=True)
class LaunchSpec:
    """What runs on the instance, with the template's values as defaults and the registry auth resolved to an id."""

    image_url: str
    image_auth_id: str | None = None
    ports: str | None = None
    envs: dict[str, str] = field(default_factory=dict)
    command: str | None = None


@dataclass(frozen=True)
class Placed:
    """A created instance, the offer that took it, and the offers skipped before it."""

    novita_instance_id: str
    offer: Offer
    skipped: list[Skipped]


class Placement:
    """Chooses offers, resolves templates and registry auths, and creates on the first offer with capacity."""

    def __init__(self, catalog: ProductCatalog, novita: NovitaClient, *, region_order: Sequence[str] = ()) -> None:
        self._catalog = catalog
        self._novita = novita
        self._region_order = list(region_order)

    async def plan(self, request: PlacementRequest) -> PlacementPlan:
        """Offers in the order to try them; `PlacementError` for a cluster id Novita does not list."""
        if (request.gpu_name is None) == (request.product_id is None):
            raise PlacementError("give exactly one of a GPU product name or a product id")
        known = [region.id for region in await self._catalog.list_regions()]
        unknown = [cluster for cluster in request.cluster_ids if cluster not in known]
        if unknown:
            raise PlacementError(f"unknown cluster ids {unknown}; Novita lists {known}")
        if request.product_id is not None:
            clusters: list[str | None] = list(request.cluster_ids) or [None]
            return PlacementPlan([Offer(request.product_id, cluster) for cluster in clusters])
        if request.cluster_ids:
            return await self._cheapest_in(request, list(request.cluster_ids))
        ranked = [cluster for cluster in self._region_order if cluster in known]
        ignored = [cluster for cluster in self._region_order if cluster not in known]
        if ignored:
            logger.warning("configured region order names clusters Novita does not list", extra={"ignored": ignored})
        first = await self._cheapest_in(request, ranked)
        others = await self._cheapest_in(request, [cluster for cluster in known if cluster not in ranked])
        others.offers.sort(key=lambda offer: (offer.price is None, offer.price or 0.0))
        # Only clusters someone preferred are worth a note when they have nothing; the rest are just not offers.
        return PlacementPlan(first.offers + others.offers, first.unavailable)

    async def _cheapest_in(self, request: PlacementRequest, clusters: list[str]) -> PlacementPlan:
        assert request.gpu_name is not None
        plan = PlacementPlan([])
        for cluster in clusters:
            product = await self._catalog.cheapest_available(
                request.gpu_name, cluster, request.billing_mode, request.gpu_num
            )
            if product is None:
                plan.unavailable.append(Skipped("no_product", cluster, f"no available '{request.gpu_name}'"))
            else:
                plan.offers.append(Offer(product.id, cluster, product.price))
        return plan

    async def resolve_launch(
        self,
        *,
        template_id: str | None = None,
        image_url: str | None = None,
        image_auth: str | None = None,
        ports: str | None = None,
        envs: dict[str, str] | None = None,
        command: str | None = None,
    ) -> LaunchSpec:
        """The request's values over the template's; `image_auth` may be a registry auth's id or name."""
        template_image = template_auth = template_ports = template_command = None
        template_envs: dict[str, str] = {}
        if template_id is not None:
            try:
                template = await self._novita.get_template(template_id)
            except NovitaNotFound:
                raise PlacementError(f"template {template_id!r} does not exist on Novita") from None
            template_image, template_auth = template.image or None, template.image_auth or None
            template_ports, template_command = template.ports_spec() or None, template.start_command or None
            template_envs = {env.key: env.value for env in template.envs}
        image = image_url or template_image
        if not image:
            raise PlacementError("no image: give imageUrl, or a templateId whose template has an image")
        auth_ref = image_auth or template_auth
        return LaunchSpec(
            image_url=image,
            image_auth_id=await self._registry_auth_id(auth_ref) if auth_ref else None,
            ports=ports or template_ports,
            envs={**template_envs, **(envs or {})},
            command=command or template_command,
        )

    async def _registry_auth_id(self, reference: str) -> str:
        auths = await self._novita.list_registry_auths()
        for auth in auths:
            if auth.id == reference:
                return auth.id
        for auth in auths:
            if auth.name == reference:
                return auth.id
        raise PlacementError(f"registry auth {reference!r} does not exist on Novita (by id or name)")

    async def create(self, plan: PlacementPlan, build: Callable[[Offer], CreateInstanceRequest]) -> Placed:
        """Create on the first offer with capacity; `NoCapacity` when none had any.

        Errors of `build` and Novita errors other than `INSUFFICIENT_RESOURCE` propagate.
        """
        skipped = list(plan.unavailable)
        for offer in plan.offers:
            try:
                novita_id = await self._novita.create_instance(build(offer))
            except NovitaInsufficientResource as error:
                skipped.append(Skipped("insufficient_resource", offer.cluster_id or "any cluster", error.message))
                continue
            return Placed(novita_id, offer, skipped)
        raise NoCapacity(skipped)
