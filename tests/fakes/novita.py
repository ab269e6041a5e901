"""A fake Novita GPU-instance API v1 server for tests (an ASGI app on Starlette).

It serves the v1 endpoints the client uses at Novita's paths under ``/gpu-instance/openapi/v1``, checks the bearer
key, moves instances through Novita's statuses over time, and answers errors in Novita's ``{code, reason,
message, metadata}`` envelope. Tests steer it through control endpoints under ``/_fake/`` (no auth):

- ``POST /_fake/reset``: forget instances, faults and call counts; restore the start-up step duration.
- ``POST /_fake/faults``: add fault rules (one rule, a list, or ``{"faults": [...]}``); ``GET`` lists the
  active ones, ``DELETE`` clears them. A rule: ``{"path": "/gpu/instance/create" | "*", "method": "POST"
  (optional), "kind": ..., "count": 1 (null = every matching call), "status", "retryAfter", "delaySeconds",
  "reason", "message", "body", "contentType"}``; kinds: ``rate_limit``, ``server_error``, ``html_error``,
  ``error`` (any status/reason/message or a raw body), ``timeout`` (hang ``delaySeconds``, default 30, without
  acting), ``slow`` (wait ``delaySeconds``, default 1, then act), ``insufficient_resource``, ``lost_response``
  (act, then answer ``status`` (500) or, with ``delaySeconds``, answer only after that delay), ``bare_404`` (a
  404 without Novita's error body, as a proxy or a wrong route answers: plain text ``404 page not found``).
  Novita's 400 reasons (``CREATE_GPU_NUM_LIMIT``, ``CLUSTER_STATUS``, ``NODE_STATUS``, ``BANNED_USER`` ...) are
  ``{"kind": "error", "reason": ...}``.
- ``GET /_fake/calls``: ``{"calls": {"POST /gpu/instance/create": 1, ...}}`` (every request to the API, faulted
  or not); ``DELETE`` zeroes them.
- ``GET /_fake/instances``: ``{"instances": [...]}`` as Novita would list them, plus ``frozen``.
- ``POST /_fake/instances/{id}/state``: ``{"status": "running", "statusError": {"state", "message"} | null,
  "frozen": true, "portsAnswer": false}`` (each optional); ``DELETE /_fake/instances/{id}`` makes it vanish.
- Port endpoints point back at the fake on loopback (``http://<fake>/_fake/ports/{id}/{port}``, ``<fake>`` for TCP):
  they answer 200 while the instance runs and ``portsAnswer`` is true (the default), else 502 like Novita's proxy,
  so readiness probes never leave the machine.
- Connection details: ``connectComponentSSH.sshCommand`` (a proxy host nobody connects to; its ``password`` is a
  secret the service must drop), ``connectComponentJupyter`` (the 8888/http port's endpoint when the instance
  exposes it) and ``connectComponentWebTerminal.address`` (``http://<fake>/_fake/terminal/{id}``, 200 while
  running), all on loopback like the port endpoints.
- ``POST /_fake/advance``: ``{"instanceId": optional, "steps": 1}`` moves instances along their lifecycle.
- ``POST /_fake/preload``: ``{"instances": [{"name", "status" ("running"), "billingMode" ("onDemand"),
  "createdAt" (now)}, ...]}`` adds instances at once (fleets of thousands for the scale benchmark); returns their ids.
- Listing calls filtered by name (the lookup after a lost create) are also counted as ``GET /gpu/instances?name``.
- ``GET``/``POST /_fake/config``: any of ``{"stepSeconds": 0.2}`` (``null`` turns automatic progress off) and the
  readings of Novita's docs that differ (reference section 2), each a switch: ``pageBase`` 0 or 1 (default 1) and,
  when 1-based, ``pageZero`` ``"first"`` (page 0 answers page 1, the default) or ``"empty"``; ``pageCap`` (a
  server-side maximum page size below the one asked for, ``null`` = none); ``total`` ``"int"`` (default),
  ``"string"`` or ``"absent"``; ``keyRefusal`` how a wrong key is refused: ``"401"`` (default, ``FAILED_TO_AUTH``)
  or a reason answered as HTTP 400 (``"INVALID_USER_TOKEN"``, ``"BANNED_USER"``).

Conventions of the fake: an instance moves one status every ``stepSeconds`` (toCreate -> creating -> pulling ->
running); an image URL containing ``does-not-exist`` stalls in ``pulling`` with a ``statusError``; names are not
unique (like Novita), so a duplicated create shows up as two instances. Create checks ``tools``,
``networkStorages``, ``entrypoint``, ``imageAuth`` and ``minCudaVersion`` as documented (reference section 1.4) and
answers ``CUDA_VERSION_INCOMPATIBLE`` when the product's nodes have an older CUDA than ``minCudaVersion``; the
control view of an instance shows those fields under ``received`` (``imageAuth`` only as ``imageAuthSent``).

Standalone: ``python -m tests.fakes.novita --host 127.0.0.1 --port 8089 --api-key KEY [--step-seconds 1]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

BASE_PREFIX = "/gpu-instance/openapi/v1"
DEFAULT_STEP_SECONDS = 1.0
STALLING_IMAGE_MARKER = "does-not-exist"
JUPYTER_PORT = 8888

# The statuses an instance passes through by itself (reference §1.6).
AUTOMATIC_NEXT_STATUS = {
    "toCreate": "creating",
    "creating": "pulling",
    "pulling": "running",
    "toStart": "starting",
    "starting": "running",
    "toStop": "stopping",
    "stopping": "exited",
    "toRestart": "restarting",
    "restarting": "running",
    "migrating": "running",
    "toRemove": "removing",
    "removing": "removed",
}
REMOVAL_STATUSES = frozenset({"toRemove", "removing", "removed"})
# action -> (statuses it is allowed from, status it moves to)
ACTIONS = {
    "start": (frozenset({"exited"}), "toStart"),
    "stop": (frozenset({"running"}), "toStop"),
    "restart": (frozenset({"running"}), "toRestart"),
    "migrate": (frozenset({"exited"}), "migrating"),  # onto other hardware: a reclaimed spot instance
}

CLUSTERS: list[dict[str, Any]] = [
    {
        "id": "us-ca-6",
        "name": "US-CA-06 (California)",
        "availableGpuType": ["RTX 4090 24GB", "H100 SXM 80GB"],
        "supportNetworkStorage": True,
        "supportInstanceNetwork": True,
    },
    {
        "id": "as-sgp-2",
        "name": "AS-SGP-02 (Singapore)",
        "availableGpuType": ["RTX 4090 24GB", "RTX 5090 32GB"],
        "supportNetworkStorage": True,
        "supportInstanceNetwork": False,
    },
    {
        "id": "eu-de-1",
        "name": "EU-DE-01 (Germany)",
        "availableGpuType": ["RTX 4090 24GB", "H100 SXM 80GB"],
        "supportNetworkStorage": False,
        "supportInstanceNetwork": False,
    },
    {
        "id": "cn-hongkong-1",
        "name": "CN-HK-01 (Hong Kong)",
        "availableGpuType": ["A100 SXM 80GB"],
        "supportNetworkStorage": False,
        "supportInstanceNetwork": False,
    },
]
_CLUSTER_NAMES = {cluster["id"]: cluster["name"] for cluster in CLUSTERS}


def _product(
    gpu: str,
    cluster_id: str,
    price: int,
    spot_price: int | None,
    *,
    available: bool = True,
    gpus: int = 8,
    billing: tuple[str, ...] = ("onDemand", "spot", "monthly"),
    cuda: str = "12.4",
) -> dict[str, Any]:
    slug = gpu.split()[1].lower() if gpu.startswith("RTX") else gpu.split()[0].lower()
    return {
        "id": f"{slug}-{cluster_id}",
        "name": gpu,
        "cpuPerGpu": 16,
        "memoryPerGpu": 62,
        "diskPerGpu": 200,
        "availableDeploy": available,
        "minRootFS": 10,
        "maxRootFS": 500,
        "minLocalStorage": 0,
        "maxLocalStorage": 1000,
        "regions": [_CLUSTER_NAMES[cluster_id]],
        "price": price,
        "monthlyPrice": [{"price": price * 500, "month": 1}],
        "billingMethods": list(billing),
        "spotPrice": str(spot_price) if spot_price is not None else "",
        "inventoryState": "normal" if available else "none",
        "availableGpuNumber": gpus if available else 0,
        # Where the fake keeps the product's single cluster and its nodes' CUDA version; not Novita fields.
        "_clusterId": cluster_id,
        "_cudaVersion": cuda,
    }


# Prices in Novita's raw unit (the SDK reads them as 1/100000 USD per hour).
PRODUCTS: list[dict[str, Any]] = [
    _product("RTX 4090 24GB", "us-ca-6", 67000, 34000),
    _product("RTX 4090 24GB", "as-sgp-2", 69000, 35000, cuda="12.8"),
    _product("RTX 4090 24GB", "eu-de-1", 71000, 36000, available=False),
    _product("H100 SXM 80GB", "us-ca-6", 145000, 73000, gpus=4),
    _product("H100 SXM 80GB", "eu-de-1", 150000, None, billing=("onDemand", "monthly")),
    _product("RTX 5090 32GB", "as-sgp-2", 63000, 32000),
    _product("A100 SXM 80GB", "cn-hongkong-1", 120000, None, available=False, billing=("onDemand",)),
]

TEMPLATES: list[dict[str, Any]] = [
    {
        "Id": "tpl-pytorch",
        "name": "PyTorch 2.4",
        "type": "instance",
        "channel": "official",
        "image": "docker.io/pytorch/pytorch:2.4.0-cuda12.4-cudnn9-runtime",
        "imageAuth": "",
        "startCommand": "",
        "rootfsSize": 60,
        "ports": [{"type": "http", "ports": [8888]}, {"type": "tcp", "ports": [22]}],
        "envs": [{"key": "JUPYTER_TOKEN", "value": "fake"}],
    },
    {
        "Id": "tpl-private",
        "name": "Private inference",
        "type": "instance",
        "channel": "private",
        "image": "registry.example.com/team/infer:1.0",
        "imageAuth": "auth-registry-1",
        "startCommand": "serve",
        "rootfsSize": 100,
        "ports": [{"type": "http", "ports": [8000]}],
        "envs": [],
    },
    {
        "Id": "tpl-ubuntu",
        "name": "Ubuntu 22.04",
        "type": "instance",
        "channel": "official",
        "image": "docker.io/library/ubuntu:22.04",
        "imageAuth": "",
        "startCommand": "sleep infinity",
        "rootfsSize": 20,
        "ports": [],
        "envs": [],
    },
]

REGISTRY_AUTHS: list[dict[str, Any]] = [
    {"id": "auth-registry-1", "name": "example-registry", "username": "robot", "password": "fake-registry-password"},
]


def novita_error(status: int, reason: str, message: str) -> JSONResponse:
    """An error in Novita's envelope."""
    return JSONResponse({"code": status, "reason": reason, "message": message, "metadata": {}}, status_code=status)


class FakeRequestError(Exception):
    """Raised inside a handler to answer a Novita-style 400."""

    def __init__(self, reason: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.response = novita_error(status, reason, message)


@dataclass
class FakeInstance:
    """An instance held by the fake, with the timestamp of its last status change."""

    id: str
    name: str
    product: dict[str, Any]
    gpu_num: int
    rootfs_size: int
    image_url: str
    image_auth_id: str
    ports: list[tuple[int, str]]
    envs: list[dict[str, str]]
    command: str
    billing_mode: str
    status: str
    status_since: float
    created_at: int
    status_error: dict[str, str] = field(default_factory=lambda: {"state": "", "message": ""})
    frozen: bool = False
    address: str = "127.0.0.1"  # host:port of the fake as the creating client saw it: where port endpoints lead
    ports_answer: bool = True
    received: dict[str, Any] = field(default_factory=dict)  # optional create fields, for tests to inspect

    def set_status(self, status: str, now: float) -> None:
        """Move to ``status`` now."""
        self.status = status
        self.status_since = now

    def stalls_here(self) -> bool:
        """True where the instance stops progressing by itself (frozen, or a failed image pull)."""
        return self.frozen or (self.status == "pulling" and STALLING_IMAGE_MARKER in self.image_url)

    def public_endpoint(self, port: int, kind: str) -> str:
        """The public endpoint of an exposed port: back to the fake on loopback (``host:port`` for TCP)."""
        return f"http://{self.address}/_fake/ports/{self.id}/{port}" if kind == "http" else self.address

    def to_wire(self) -> dict[str, Any]:
        """The instance as Novita's list/get answers show it (numbers as strings, secrets included)."""
        cluster_id = self.product["_clusterId"]
        running = self.status == "running"
        # Novita serves Jupyter on an exposed 8888/http port; the web terminal is its own proxied page.
        jupyter = JUPYTER_PORT in {port for port, kind in self.ports if kind == "http"}
        return {
            "id": self.id,
            "name": self.name,
            "clusterId": cluster_id,
            "clusterName": _CLUSTER_NAMES[cluster_id],
            "status": self.status,
            "statusError": dict(self.status_error),
            "imageUrl": self.image_url,
            "imageAuthId": self.image_auth_id,
            "command": self.command,
            "cpuNum": str(16 * self.gpu_num),
            "memory": str(62 * self.gpu_num),
            "gpuNum": str(self.gpu_num),
            "portMappings": [
                {"port": port, "type": kind, "endpoint": self.public_endpoint(port, kind)} for port, kind in self.ports
            ],
            "productId": self.product["id"],
            "productName": self.product["name"],
            "rootfsSize": self.rootfs_size,
            "volumeMounts": [],
            "envs": list(self.envs),
            "kind": "gpu",
            "billingMode": self.billing_mode,
            "endTime": "-1",
            "spotStatus": "running" if self.billing_mode == "spot" else "",
            "spotReclaimTime": "0",
            "createdAt": str(self.created_at),
            "connectComponentSSH": {
                "sshCommand": f"ssh -p 32787 root@proxy.{cluster_id}.fake-novita.local",
                "password": f"ssh-pass-{self.id}",
                "isRunning": running,
            },
            "connectComponentWebTerminal": {
                "address": f"http://{self.address}/_fake/terminal/{self.id}",
                "username": "root",
                "password": f"web-pass-{self.id}",
                "isRunning": running,
            },
            "connectComponentJupyter": {
                "port": JUPYTER_PORT if jupyter else 0,
                "address": self.public_endpoint(JUPYTER_PORT, "http") if jupyter else "",
                "isRunning": running and jupyter,
            },
        }


@dataclass
class FaultRule:
    """One injected fault: which calls it hits, what it does, how many more times."""

    kind: str
    path: str = "*"
    method: str | None = None
    count: int | None = 1
    status: int | None = None
    retry_after: float | None = None
    delay_seconds: float | None = None
    reason: str | None = None
    message: str | None = None
    body: str | None = None
    content_type: str = "text/plain"

    KINDS = (
        "rate_limit",
        "server_error",
        "html_error",
        "error",
        "timeout",
        "slow",
        "insufficient_resource",
        "lost_response",
        "bare_404",
    )

    @classmethod
    def from_json(cls, data: Any) -> FaultRule:
        """Build a rule from its JSON form, with a clear error for a bad one."""
        if not isinstance(data, dict):
            raise ValueError("a fault rule must be a JSON object")
        keys = {
            "kind": "kind",
            "path": "path",
            "method": "method",
            "count": "count",
            "status": "status",
            "retryAfter": "retry_after",
            "delaySeconds": "delay_seconds",
            "reason": "reason",
            "message": "message",
            "body": "body",
            "contentType": "content_type",
        }
        unknown = set(data) - set(keys)
        if unknown:
            raise ValueError(f"unknown fault rule fields: {sorted(unknown)}")
        rule = cls(**{keys[name]: value for name, value in data.items()})
        if rule.kind not in cls.KINDS:
            raise ValueError(f"fault kind must be one of {cls.KINDS}, got {rule.kind!r}")
        for name in ("count", "status"):
            if getattr(rule, name) is not None and not isinstance(getattr(rule, name), int):
                raise ValueError(f"{name} must be an integer or null")
        for name in ("retry_after", "delay_seconds"):
            if getattr(rule, name) is not None and not isinstance(getattr(rule, name), (int, float)):
                raise ValueError(f"{name} must be a number or null")
        return rule

    def to_json(self) -> dict[str, Any]:
        """The rule as the control API shows it."""
        return {
            "kind": self.kind,
            "path": self.path,
            "method": self.method,
            "count": self.count,
            "status": self.status,
            "retryAfter": self.retry_after,
            "delaySeconds": self.delay_seconds,
            "reason": self.reason,
            "message": self.message,
        }

    def matches(self, method: str, path: str) -> bool:
        """True if this rule applies to the call and has uses left."""
        return (
            (self.count is None or self.count > 0)
            and self.path in ("*", path)
            and (self.method is None or self.method.upper() == method)
        )


Handler = Callable[[Request], Awaitable[Response]]


class FakeNovita:
    """State and behaviour of the fake; ``app`` is the ASGI application."""

    def __init__(self, api_key: str, step_seconds: float | None = DEFAULT_STEP_SECONDS) -> None:
        self.api_key = api_key
        self.initial_step_seconds = step_seconds
        self.step_seconds = step_seconds
        self.listing = ListingReading()
        self.instances: dict[str, FakeInstance] = {}
        self.faults: list[FaultRule] = []
        self.calls: Counter[str] = Counter()
        self._api: dict[tuple[str, str], Handler] = {
            ("GET", "/products"): self.list_products,
            ("GET", "/clusters"): self.list_clusters,
            ("POST", "/gpu/instance/create"): self.create_instance,
            ("GET", "/gpu/instances"): self.list_instances,
            ("GET", "/gpu/instance"): self.get_instance,
            ("POST", "/gpu/instance/start"): self.start_instance,
            ("POST", "/gpu/instance/stop"): self.stop_instance,
            ("POST", "/gpu/instance/restart"): self.restart_instance,
            ("POST", "/gpu/instance/migrate"): self.migrate_instance,
            ("POST", "/gpu/instance/delete"): self.delete_instance,
            ("GET", "/templates"): self.list_templates,
            ("GET", "/template"): self.get_template,
            ("GET", "/repository/auths"): self.list_registry_auths,
        }
        self.app = Starlette(
            routes=[
                Route("/_fake/reset", self.control_reset, methods=["POST"]),
                Route("/_fake/faults", self.control_faults, methods=["GET", "POST", "DELETE"]),
                Route("/_fake/calls", self.control_calls, methods=["GET", "DELETE"]),
                Route("/_fake/instances", self.control_instances, methods=["GET"]),
                Route("/_fake/instances/{instance_id}/state", self.control_set_state, methods=["POST"]),
                Route("/_fake/instances/{instance_id}", self.control_vanish, methods=["DELETE"]),
                Route("/_fake/advance", self.control_advance, methods=["POST"]),
                Route("/_fake/preload", self.control_preload, methods=["POST"]),
                Route("/_fake/ports/{instance_id}/{port}", self.port_endpoint, methods=["GET"]),
                Route("/_fake/terminal/{instance_id}", self.web_terminal, methods=["GET"]),
                Route("/_fake/config", self.control_config, methods=["GET", "POST"]),
                Route(BASE_PREFIX + "/{path:path}", self.dispatch, methods=["GET", "POST", "PUT", "DELETE"]),
            ]
        )

    # -- the API -----------------------------------------------------------------------------------------------

    async def dispatch(self, request: Request) -> Response:
        """Count the call, check the key, apply a matching fault, then run the endpoint."""
        path = "/" + request.path_params["path"]
        method = request.method
        self.calls[f"{method} {path}"] += 1
        if path == "/gpu/instances" and request.query_params.get("name"):
            self.calls[f"{method} {path}?name"] += 1
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            if self.listing.key_refusal != "401":
                return novita_error(400, self.listing.key_refusal, "invalid user token")
            return novita_error(401, "FAILED_TO_AUTH", "failed to authenticate API key")
        handler = self._api.get((method, path))
        if handler is None:
            return novita_error(404, "NOT_FOUND", f"no endpoint {method} {path}")
        fault = next((rule for rule in self.faults if rule.matches(method, path)), None)
        if fault is not None and fault.count is not None:
            fault.count -= 1
        return await self._answer(fault, handler, request)

    async def _answer(self, fault: FaultRule | None, handler: Handler, request: Request) -> Response:
        if fault is None:
            return await self._run(handler, request)
        if fault.kind == "rate_limit":
            headers = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else {}
            response = novita_error(429, "RATE_LIMIT_EXCEEDED", fault.message or "rate limit exceeded")
            response.headers.update(headers)
            return response
        if fault.kind == "server_error":
            return novita_error(fault.status or 500, fault.reason or "UNKNOWN", fault.message or "internal error")
        if fault.kind == "html_error":
            status = fault.status or 502
            title = f"{status} Bad Gateway"
            page = f"<html><head><title>{title}</title></head><body><h1>{title}</h1></body></html>"
            return Response(page, status_code=status, media_type="text/html")
        if fault.kind == "error":
            if fault.body is not None:
                return Response(fault.body, status_code=fault.status or 400, media_type=fault.content_type)
            return novita_error(fault.status or 400, fault.reason or "", fault.message or "injected error")
        if fault.kind == "bare_404":
            return Response("404 page not found\n", status_code=404, media_type="text/plain")
        if fault.kind == "insufficient_resource":
            return novita_error(400, "INSUFFICIENT_RESOURCE", fault.message or "insufficient resource")
        if fault.kind == "timeout":
            await asyncio.sleep(30.0 if fault.delay_seconds is None else fault.delay_seconds)
            return novita_error(504, "TIMEOUT", "gateway timeout")
        if fault.kind == "slow":
            await asyncio.sleep(1.0 if fault.delay_seconds is None else fault.delay_seconds)
            return await self._run(handler, request)
        # lost_response: the action happens, the caller does not learn it.
        answered = await self._run(handler, request)
        if fault.delay_seconds is not None:
            await asyncio.sleep(fault.delay_seconds)
            return answered
        return novita_error(fault.status or 500, "UNKNOWN", "internal error")

    async def _run(self, handler: Handler, request: Request) -> Response:
        self._progress()
        try:
            return await handler(request)
        except FakeRequestError as error:
            return error.response

    async def list_products(self, request: Request) -> Response:
        query = request.query_params
        name = query.get("productName", "").lower()
        products = [
            _public(product)
            for product in PRODUCTS
            if name in product["name"].lower()
            and query.get("clusterId") in (None, "", product["_clusterId"])
            and query.get("billingMethod") in (None, "", *product["billingMethods"])
        ]
        return JSONResponse({"data": products})

    async def list_clusters(self, request: Request) -> Response:
        return JSONResponse({"data": CLUSTERS})

    async def create_instance(self, request: Request) -> Response:
        body = await _json_object(request)
        for required in ("productId", "gpuNum", "rootfsSize", "imageUrl", "kind"):
            if body.get(required) in (None, ""):
                raise FakeRequestError("VALIDATOR_PARAM", f"{required} is required")
        product = next((product for product in PRODUCTS if product["id"] == body["productId"]), None)
        if product is None:
            raise FakeRequestError("VALIDATOR_PARAM", f"productId {body['productId']} does not exist")
        gpu_num = _int_field(body, "gpuNum", 1, 8)
        rootfs_size = max(10, _int_field(body, "rootfsSize", 0, 6144))
        billing_mode = body.get("billingMode") or "onDemand"
        if billing_mode not in product["billingMethods"]:
            raise FakeRequestError("UNSUPPORTED_BILLING_MODE", f"billing mode {billing_mode} is not supported")
        if body.get("clusterId") not in (None, "", product["_clusterId"]):
            raise FakeRequestError("VALIDATOR_PARAM", f"product {product['id']} is not in cluster {body['clusterId']}")
        if not product["availableDeploy"] or gpu_num > product["availableGpuNumber"]:
            raise FakeRequestError("INSUFFICIENT_RESOURCE", "insufficient resource")
        auth_id = body.get("imageAuthId") or ""
        if auth_id and auth_id not in {auth["id"] for auth in REGISTRY_AUTHS}:
            raise FakeRequestError("VALIDATOR_PARAM", f"imageAuthId {auth_id} does not exist")
        received = _optional_create_fields(body)
        wanted_cuda = received.get("minCudaVersion")
        if wanted_cuda and _version(wanted_cuda) > _version(product["_cudaVersion"]):
            raise FakeRequestError(
                "CUDA_VERSION_INCOMPATIBLE",
                f"no node of {product['id']} has CUDA {wanted_cuda} (they have {product['_cudaVersion']})",
            )
        instance = FakeInstance(
            id=secrets.token_hex(8),
            name=str(body.get("name") or ""),
            product=product,
            gpu_num=gpu_num,
            rootfs_size=rootfs_size,
            image_url=str(body["imageUrl"]),
            image_auth_id=auth_id,
            ports=_parse_ports(body.get("ports")),
            envs=list(body.get("envs") or []),
            command=str(body.get("command") or ""),
            billing_mode=billing_mode,
            status="toCreate",
            status_since=time.monotonic(),
            created_at=int(time.time()),
            address=request.url.netloc,
            received=received,
        )
        if STALLING_IMAGE_MARKER in instance.image_url:
            instance.status_error = {"state": "pulling", "message": f"failed to pull image {instance.image_url}"}
        self.instances[instance.id] = instance
        return JSONResponse({"id": instance.id})

    async def list_instances(self, request: Request) -> Response:
        query = request.query_params
        page_num, page_size = _page_params(query, required=True)
        name = query.get("name", "").lower()
        product_name = query.get("productName", "").lower()
        matching = [
            instance
            for instance in self.instances.values()
            if name in instance.name.lower()
            and product_name in instance.product["name"].lower()
            and query.get("status") in (None, "", instance.status)
        ]
        body = self.listing.page("instances", matching, page_num, page_size)
        body["instances"] = [instance.to_wire() for instance in body["instances"]]  # only the page: fleets are large
        return JSONResponse(body)

    async def get_instance(self, request: Request) -> Response:
        return JSONResponse(self._instance(request.query_params.get("instanceId")).to_wire())

    async def start_instance(self, request: Request) -> Response:
        return await self._action(request, "start")

    async def stop_instance(self, request: Request) -> Response:
        return await self._action(request, "stop")

    async def restart_instance(self, request: Request) -> Response:
        return await self._action(request, "restart")

    async def migrate_instance(self, request: Request) -> Response:
        return await self._action(request, "migrate")

    async def delete_instance(self, request: Request) -> Response:
        instance = self._instance((await _json_object(request)).get("instanceId"))
        if instance.status == "removed":
            raise FakeRequestError("RESOURCE_NOT_FOUND", "instance not found")
        if instance.status not in REMOVAL_STATUSES:
            instance.set_status("toRemove", time.monotonic())
        return JSONResponse({})

    async def _action(self, request: Request, action: str) -> Response:
        instance = self._instance((await _json_object(request)).get("instanceId"))
        allowed_from, next_status = ACTIONS[action]
        if instance.status not in allowed_from:
            # Novita's observed answer (reference §1.6): a 400 whose only signal is the message.
            raise FakeRequestError("", "invalid state change")
        instance.set_status(next_status, time.monotonic())
        instance.status_error = {"state": "", "message": ""}
        return JSONResponse({"instanceId": instance.id, "state": next_status})

    async def list_templates(self, request: Request) -> Response:
        page_num, page_size = _page_params(request.query_params, required=False)
        page = self.listing.page("template", TEMPLATES, page_num, page_size or len(TEMPLATES))
        return JSONResponse({**page, "pageNum": page_num, "pageSize": page_size})

    async def get_template(self, request: Request) -> Response:
        template_id = request.query_params.get("templateId")
        template = next((template for template in TEMPLATES if template["Id"] == template_id), None)
        if template is None:
            raise FakeRequestError("TEMPLATE_NOT_FOUND", f"template {template_id} not found")
        return JSONResponse({"template": template})

    async def list_registry_auths(self, request: Request) -> Response:
        return JSONResponse({"data": REGISTRY_AUTHS})

    # -- state -------------------------------------------------------------------------------------------------

    def _instance(self, instance_id: Any) -> FakeInstance:
        instance = self.instances.get(instance_id) if isinstance(instance_id, str) else None
        if instance is None:
            raise FakeRequestError("RESOURCE_NOT_FOUND", "instance not found")
        return instance

    def _progress(self) -> None:
        """Move every instance along by the steps whose time has come."""
        if self.step_seconds is None:
            return
        now = time.monotonic()
        for instance in self.instances.values():
            while instance.status in AUTOMATIC_NEXT_STATUS and not instance.stalls_here():
                if self.step_seconds > 0 and now - instance.status_since < self.step_seconds:
                    break
                since = instance.status_since + self.step_seconds if self.step_seconds > 0 else now
                instance.set_status(AUTOMATIC_NEXT_STATUS[instance.status], since)

    # -- control API -------------------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget everything tests changed."""
        self.instances.clear()
        self.faults.clear()
        self.calls.clear()
        self.step_seconds = self.initial_step_seconds
        self.listing = ListingReading()

    async def control_reset(self, request: Request) -> Response:
        self.reset()
        return JSONResponse({"ok": True})

    async def control_faults(self, request: Request) -> Response:
        if request.method == "DELETE":
            self.faults.clear()
        elif request.method == "POST":
            data = await _control_json(request)
            rules = data.get("faults") if isinstance(data, dict) and "faults" in data else data
            rules = rules if isinstance(rules, list) else [rules]
            try:
                self.faults.extend([FaultRule.from_json(rule) for rule in rules])
            except (TypeError, ValueError) as error:
                return JSONResponse({"error": str(error)}, status_code=400)
        self.faults = [rule for rule in self.faults if rule.count is None or rule.count > 0]
        return JSONResponse({"faults": [rule.to_json() for rule in self.faults]})

    async def control_calls(self, request: Request) -> Response:
        if request.method == "DELETE":
            self.calls.clear()
        return JSONResponse({"calls": dict(self.calls)})

    async def control_instances(self, request: Request) -> Response:
        self._progress()
        return JSONResponse({"instances": [self._inspect(instance) for instance in self.instances.values()]})

    async def control_set_state(self, request: Request) -> Response:
        instance = self.instances.get(request.path_params["instance_id"])
        if instance is None:
            return JSONResponse({"error": "no such instance"}, status_code=404)
        data = await _control_json(request)
        if not isinstance(data, dict):
            return JSONResponse({"error": "body must be a JSON object"}, status_code=400)
        if "status" in data:
            instance.set_status(str(data["status"]), time.monotonic())
        if "statusError" in data:
            error = data["statusError"] or {}
            instance.status_error = {"state": str(error.get("state", "")), "message": str(error.get("message", ""))}
        if "frozen" in data:
            instance.frozen = bool(data["frozen"])
        if "portsAnswer" in data:
            instance.ports_answer = bool(data["portsAnswer"])
        return JSONResponse({"instance": self._inspect(instance)})

    async def port_endpoint(self, request: Request) -> Response:
        """What an instance's exposed HTTP port answers through Novita's proxy."""
        instance = self.instances.get(request.path_params["instance_id"])
        if instance is None or instance.status != "running" or not instance.ports_answer:
            return JSONResponse({"error": "upstream not answering"}, status_code=502)
        return JSONResponse({"port": request.path_params["port"]})

    async def web_terminal(self, request: Request) -> Response:
        """The instance's browser terminal page, reachable while it runs."""
        instance = self.instances.get(request.path_params["instance_id"])
        if instance is None or instance.status != "running":
            return JSONResponse({"error": "terminal not running"}, status_code=502)
        return Response("<html><body><h1>web terminal</h1></body></html>", media_type="text/html")

    async def control_vanish(self, request: Request) -> Response:
        removed = self.instances.pop(request.path_params["instance_id"], None)
        return JSONResponse({"removed": removed is not None}, status_code=200 if removed else 404)

    async def control_advance(self, request: Request) -> Response:
        data = await _control_json(request) or {}
        instance_id = data.get("instanceId") if isinstance(data, dict) else None
        steps = int(data.get("steps", 1)) if isinstance(data, dict) else 1
        targets = (
            [self.instances[instance_id]]
            if instance_id in self.instances
            else ([] if instance_id else list(self.instances.values()))
        )
        if instance_id and not targets:
            return JSONResponse({"error": "no such instance"}, status_code=404)
        now = time.monotonic()
        for instance in targets:
            for _ in range(steps):
                if instance.status in AUTOMATIC_NEXT_STATUS:
                    instance.set_status(AUTOMATIC_NEXT_STATUS[instance.status], now)
        return JSONResponse({"instances": [self._inspect(instance) for instance in targets]})

    async def control_preload(self, request: Request) -> Response:
        data = await _control_json(request)
        items = data.get("instances") if isinstance(data, dict) else None
        if not isinstance(items, list) or not all(isinstance(item, dict) and item.get("name") for item in items):
            return JSONResponse({"error": 'body must be {"instances": [{"name": ...}, ...]}'}, status_code=400)
        product = PRODUCTS[0]
        now, ids = time.monotonic(), []
        for item in items:
            instance = FakeInstance(
                id=secrets.token_hex(8),
                name=str(item["name"]),
                product=product,
                gpu_num=1,
                rootfs_size=60,
                image_url="docker.io/library/ubuntu:22.04",
                image_auth_id="",
                ports=[(8888, "http")],
                envs=[],
                command="",
                billing_mode=str(item.get("billingMode") or "onDemand"),
                status=str(item.get("status") or "running"),
                status_since=now,
                created_at=int(item.get("createdAt") or time.time()),
                address=request.url.netloc,
            )
            self.instances[instance.id] = instance
            ids.append(instance.id)
        return JSONResponse({"ids": ids})

    async def control_config(self, request: Request) -> Response:
        if request.method == "POST":
            data = await _control_json(request)
            if not isinstance(data, dict):
                return JSONResponse({"error": "body must be a JSON object"}, status_code=400)
            try:
                listing = self.listing.changed({k: v for k, v in data.items() if k != "stepSeconds"})
            except ValueError as error:
                return JSONResponse({"error": str(error)}, status_code=400)
            if "stepSeconds" in data:
                step = data["stepSeconds"]
                if step is not None and (not isinstance(step, (int, float)) or step < 0):
                    return JSONResponse({"error": "stepSeconds must be a number >= 0 or null"}, status_code=400)
                self._progress()
                self.step_seconds = step
            self.listing = listing
        return JSONResponse({"stepSeconds": self.step_seconds, **self.listing.to_json()})

    @staticmethod
    def _inspect(instance: FakeInstance) -> dict[str, Any]:
        received = {key: value for key, value in instance.received.items() if key != "imageAuth"}
        received["imageAuthSent"] = "imageAuth" in instance.received
        return {**instance.to_wire(), "frozen": instance.frozen, "received": received}


@dataclass(frozen=True)
class ListingReading:
    """How the fake reads the list parameters where Novita's docs allow two readings (the ``/_fake/config`` switches)."""

    page_base: int = 1
    page_zero: str = "first"  # 1-based only: page 0 answers page 1 ("first") or nothing ("empty")
    page_cap: int | None = None
    total: str = "int"
    key_refusal: str = "401"

    _FIELDS: ClassVar[dict[str, str]] = {
        "pageBase": "page_base",
        "pageZero": "page_zero",
        "pageCap": "page_cap",
        "total": "total",
        "keyRefusal": "key_refusal",
    }

    def changed(self, data: dict[str, Any]) -> ListingReading:
        """A copy with the given switches set; ``ValueError`` naming a bad one."""
        unknown = set(data) - set(self._FIELDS)
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        values = {**self.__dict__, **{self._FIELDS[key]: value for key, value in data.items()}}
        reading = ListingReading(**values)
        if reading.page_base not in (0, 1):
            raise ValueError("pageBase must be 0 or 1")
        if reading.page_zero not in ("first", "empty"):
            raise ValueError("pageZero must be 'first' or 'empty'")
        if reading.page_cap is not None and (not isinstance(reading.page_cap, int) or reading.page_cap < 1):
            raise ValueError("pageCap must be a positive integer or null")
        if reading.total not in ("int", "string", "absent"):
            raise ValueError("total must be 'int', 'string' or 'absent'")
        if reading.key_refusal not in ("401", "INVALID_USER_TOKEN", "BANNED_USER"):
            raise ValueError("keyRefusal must be '401', 'INVALID_USER_TOKEN' or 'BANNED_USER'")
        return reading

    def to_json(self) -> dict[str, Any]:
        """The switches as the control API shows them."""
        return {wire: getattr(self, name) for wire, name in self._FIELDS.items()}

    def page(self, key: str, items: list[Any], page_num: int, page_size: int) -> dict[str, Any]:
        """One page of ``items`` under this reading, in Novita's envelope."""
        size = min(page_size, self.page_cap) if self.page_cap else page_size
        if self.page_base == 1 and page_num == 0:
            index = 0 if self.page_zero == "first" else None
        else:
            index = page_num - self.page_base
        # A capped server simply uses the smaller size: pages come back short although more follow.
        start = index * size if index is not None and index >= 0 else None
        body: dict[str, Any] = {key: items[start : start + size] if start is not None else []}
        if self.total != "absent":
            body["total"] = len(items) if self.total == "int" else str(len(items))
        return body


def _public(product: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in product.items() if not key.startswith("_")}


async def _json_object(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError:
        raise FakeRequestError("VALIDATOR_PARAM", "request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise FakeRequestError("VALIDATOR_PARAM", "request body must be a JSON object")
    return body


async def _control_json(request: Request) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def _int_field(body: dict[str, Any], name: str, low: int, high: int) -> int:
    try:
        value = int(body[name])
    except (TypeError, ValueError):
        raise FakeRequestError("VALIDATOR_PARAM", f"{name} must be an integer") from None
    if not low <= value <= high:
        raise FakeRequestError("VALIDATOR_PARAM", f"{name} must be between {low} and {high}")
    return value


def _page_params(query: Any, *, required: bool) -> tuple[int, int]:
    """``pageNum`` and ``pageSize``; Novita documents both as required for instances (their base: ``ListingReading``)."""
    values = []
    for name in ("pageNum", "pageSize"):
        raw = query.get(name)
        if raw is None:
            if required:
                raise FakeRequestError("VALIDATOR_PARAM", f"{name} is required")
            values.append(0)
            continue
        try:
            values.append(int(raw))
        except ValueError:
            raise FakeRequestError("VALIDATOR_PARAM", f"{name} must be an integer") from None
    page_num, page_size = values
    if required and page_size < 1:
        raise FakeRequestError("VALIDATOR_PARAM", "pageSize must be at least 1")
    if page_num < 0:
        raise FakeRequestError("VALIDATOR_PARAM", "pageNum must be at least 0")
    return page_num, page_size


def _optional_create_fields(body: dict[str, Any]) -> dict[str, Any]:
    """The optional create fields the fake checks as Novita documents them (reference section 1.4)."""
    received: dict[str, Any] = {}
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list) or any(
            not isinstance(tool, dict)
            or tool.get("name") != "Jupyter"
            or not isinstance(tool.get("port"), str)
            or tool.get("type") not in ("tcp", "http")
            for tool in tools
        ):
            raise FakeRequestError("VALIDATOR_PARAM", "tools must be [{name: 'Jupyter', port: string, type}]")
        received["tools"] = tools
    storages = body.get("networkStorages")
    if storages is not None:
        if not isinstance(storages, list) or any(
            not isinstance(item, dict) or not item.get("Id") or not str(item.get("mountPoint", "/network"))
            for item in storages
        ):
            raise FakeRequestError("VALIDATOR_PARAM", "networkStorages must be [{Id, mountPoint}]")
        received["networkStorages"] = storages
    for name in ("entrypoint", "minCudaVersion", "imageAuth"):
        if body.get(name) not in (None, ""):
            if not isinstance(body[name], str):
                raise FakeRequestError("VALIDATOR_PARAM", f"{name} must be a string")
            received[name] = body[name]
    return received


def _version(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split("."))
    except ValueError:
        raise FakeRequestError("VALIDATOR_PARAM", f"invalid version {text!r}") from None


def _parse_ports(spec: Any) -> list[tuple[int, str]]:
    if not spec:
        return []
    ports = []
    for part in str(spec).split(","):
        port, _, kind = part.strip().partition("/")
        try:
            number = int(port)
        except ValueError:
            raise FakeRequestError("VALIDATOR_PARAM", f"invalid port {part.strip()!r}") from None
        if kind not in ("tcp", "http") or not 1 <= number <= 65535 or number in (2222, 2223, 2224):
            raise FakeRequestError("VALIDATOR_PARAM", f"invalid port {part.strip()!r}")
        ports.append((number, kind))
    return ports


def main() -> None:
    """Run the fake standalone (used by the real-Docker e2e tests)."""
    import uvicorn

    parser = argparse.ArgumentParser(description="Fake Novita GPU-instance API v1 server for tests")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8089)
    parser.add_argument("--api-key", required=True, help="the bearer key the fake accepts")
    parser.add_argument(
        "--step-seconds",
        type=float,
        default=DEFAULT_STEP_SECONDS,
        help="seconds per automatic status step; negative turns automatic progress off",
    )
    args = parser.parse_args()
    step = None if args.step_seconds < 0 else args.step_seconds
    uvicorn.run(FakeNovita(args.api_key, step).app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
