"""GPU products and regions from Novita, cached on Valkey, with the "cheapest available" rule used by placement."""

from __future__ import annotations

from pydantic import Field

from app.core.cache import Cache
from app.core.config import Settings
from app.core.schemas import ApiModel
from app.fleet.schemas import BillingMode
from app.novita.client import NovitaClient
from app.novita.models import Cluster, Product

# Cache keys; the instance list key lives with the instances.  Every key carries a TTL set by the Cache.
_PRODUCTS_KEY = "products:{cluster}:{billing_mode}"
_CLUSTERS_KEY = "clusters"


class ProductView(ApiModel):
    """A GPU product as `GET /api/products` returns it.  Prices are Novita's raw units (see `price_unit`)."""

    id: str
    name: str
    available: bool = Field(description="Novita says an instance can be created now")
    available_gpu_number: int | None = None
    price: float | None = Field(
        description="price in the requested billing mode (per GPU-hour, per month "
        "for monthly); null when the product has no such price"
    )
    on_demand_price: float | None = None
    spot_price: float | None = None
    monthly_prices: list[dict[str, float | int | None]] = Field(default_factory=list)
    price_unit: str = "novita raw units (1/100000 USD per the Novita SDK; unconfirmed)"
    billing_methods: list[str] = Field(default_factory=list)
    regions: list[str] = Field(default_factory=list)
    cpu_per_gpu: int | None = None
    memory_per_gpu_gb: int | None = None
    disk_per_gpu_gb: int | None = None
    min_rootfs_gb: int | None = None
    max_rootfs_gb: int | None = None
    inventory_state: str | None = None


class RegionView(ApiModel):
    """A Novita cluster as `GET /api/regions` returns it; `id` is what `clusterIds` in a create takes."""

    id: str
    name: str
    available_gpu_types: list[str]
    supports_network_storage: bool
    supports_instance_network: bool


def _price_in_mode(product: Product, billing_mode: BillingMode) -> float | None:
    if billing_mode == "spot":
        return product.spot_price or None
    if billing_mode == "monthly":
        per_month = [p.price / p.month for p in product.monthly_price if p.price and p.month]
        return min(per_month) if per_month else None
    return product.price


def _view(product: Product, billing_mode: BillingMode) -> ProductView:
    return ProductView(
        id=product.id,
        name=product.name,
        available=product.available_deploy,
        available_gpu_number=product.available_gpu_number,
        price=_price_in_mode(product, billing_mode),
        on_demand_price=product.price,
        spot_price=product.spot_price,
        monthly_prices=[p.model_dump() for p in product.monthly_price],
        billing_methods=product.billing_methods,
        regions=product.regions,
        cpu_per_gpu=product.cpu_per_gpu,
        memory_per_gpu_gb=product.memory_per_gpu,
        disk_per_gpu_gb=product.disk_per_gpu,
        min_rootfs_gb=product.min_root_fs,
        max_rootfs_gb=product.max_root_fs,
        inventory_state=product.inventory_state,
    )


def _cheapest_available_first(view: ProductView) -> tuple[bool, bool, float]:
    return (not view.available, view.price is None, view.price or 0.0)


class ProductService:
    """Products and regions, served from the cache; one Novita call per key and TTL however many ask at once."""

    def __init__(self, settings: Settings, novita: NovitaClient, cache: Cache) -> None:
        self._settings = settings
        self._novita = novita
        self._cache = cache

    async def list_products(
        self,
        *,
        gpu_name: str | None = None,
        cluster_id: str | None = None,
        billing_mode: BillingMode = "onDemand",
        gpu_num: int | None = None,
    ) -> list[ProductView]:
        """Products sold in `billing_mode`, optionally one GPU name (case-insensitive substring) and cluster;
        available ones first, cheapest first."""
        products = await self._products(cluster_id, billing_mode)
        needle = gpu_name.casefold() if gpu_name else None
        views = [
            _view(product, billing_mode)
            for product in products
            if (needle is None or needle in product.name.casefold())
            and (not product.billing_methods or billing_mode in product.billing_methods)
            and (gpu_num is None or product.available_gpu_number is None or product.available_gpu_number >= gpu_num)
        ]
        return sorted(views, key=_cheapest_available_first)

    async def cheapest_available(
        self, product_name: str, cluster_id: str | None, billing_mode: BillingMode, gpu_num: int
    ) -> ProductView | None:
        """The cheapest product named exactly `product_name` (any case) that can be deployed now, or None."""
        candidates = await self.list_products(
            gpu_name=product_name, cluster_id=cluster_id, billing_mode=billing_mode, gpu_num=gpu_num
        )
        wanted = product_name.casefold()
        return next((p for p in candidates if p.available and p.name.casefold() == wanted), None)

    async def price_per_gpu_hour(
        self, product_id: str, cluster_id: str | None, billing_mode: BillingMode
    ) -> float | None:
        """The product's raw price per GPU-hour in `billing_mode` (None for monthly, which is prepaid, or unknown)."""
        if billing_mode == "monthly":
            return None
        products = await self._products(cluster_id, billing_mode)
        product = next((p for p in products if p.id == product_id), None)
        return _price_in_mode(product, billing_mode) if product is not None else None

    async def list_regions(self) -> list[RegionView]:
        """Novita's clusters."""
        raw = await self._cache.get_or_load(
            _CLUSTERS_KEY,
            self._settings.cache_ttl_clusters_seconds,
            self._load_clusters,
        )
        clusters = [Cluster.model_validate(item) for item in raw]
        return [
            RegionView(
                id=c.id,
                name=c.name,
                available_gpu_types=c.available_gpu_type,
                supports_network_storage=c.support_network_storage,
                supports_instance_network=c.support_instance_network,
            )
            for c in clusters
        ]

    async def _products(self, cluster_id: str | None, billing_mode: BillingMode) -> list[Product]:
        async def load() -> list[dict[str, object]]:
            products = await self._novita.list_products(cluster_id=cluster_id, billing_method=billing_mode)
            return [p.model_dump(by_alias=True) for p in products]

        key = _PRODUCTS_KEY.format(cluster=cluster_id or "*", billing_mode=billing_mode)
        raw = await self._cache.get_or_load(key, self._settings.cache_ttl_products_seconds, load)
        return [Product.model_validate(item) for item in raw]

    async def _load_clusters(self) -> list[dict[str, object]]:
        return [c.model_dump(by_alias=True) for c in await self._novita.list_clusters()]
