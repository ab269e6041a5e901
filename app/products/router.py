"""HTTP API of GPU products and regions (Novita clusters)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from app.access.auth import require_scope
from app.core.deps import provide
from app.core.openapi import AUTHENTICATED_RESPONSES, NOVITA_RESPONSES
from app.core.schemas import ApiModel
from app.fleet.schemas import BillingMode
from app.products.service import ProductService, ProductView, RegionView

# Both operations call Novita on a cache miss: its failures are theirs to answer.
router = APIRouter(
    prefix="/api",
    tags=["products"],
    dependencies=[Depends(require_scope("read"))],
    responses={**AUTHENTICATED_RESPONSES, **NOVITA_RESPONSES},
)


class ProductList(ApiModel):
    """Answer of `GET /api/products`: available products first, cheapest first."""

    items: list[ProductView]


class RegionList(ApiModel):
    """Answer of `GET /api/regions`."""

    items: list[RegionView]


Service = Annotated[ProductService, Depends(provide(ProductService))]


@router.get("/products", response_model=ProductList)
async def list_products(
    service: Service,
    gpu_name: Annotated[
        str | None, Query(alias="gpuName", min_length=1, max_length=255, description="substring, any case")
    ] = None,
    region: Annotated[
        str | None, Query(min_length=1, max_length=255, description="a cluster id from /api/regions")
    ] = None,
    billing_mode: Annotated[BillingMode, Query(alias="billingMode")] = "onDemand",
    gpu_num: Annotated[
        int | None, Query(alias="gpuNum", ge=1, le=8, description="only products with this many GPUs free")
    ] = None,
) -> ProductList:
    """GPU products with their price in `billingMode`; products that can be deployed now come first."""
    return ProductList(
        items=await service.list_products(
            gpu_name=gpu_name, cluster_id=region, billing_mode=billing_mode, gpu_num=gpu_num
        )
    )


@router.get("/regions", response_model=RegionList)
async def list_regions(service: Service) -> RegionList:
    """Novita's clusters and the GPU types they offer."""
    return RegionList(items=await service.list_regions())
