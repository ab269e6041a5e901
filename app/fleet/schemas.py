"""Shapes of the instances API: the create request, the stored record, the views we return, and our states.

Our states are a small documented vocabulary over Novita's eighteen v1 statuses (reference section 1.6).
Novita has no `failed` status: failure is a non-empty `statusError`, which we map to `failed` whatever the status says.
"""

from __future__ import annotations

import hashlib
import json
import time
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    FieldSerializationInfo,
    SecretStr,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)

from app.core.schemas import ApiModel, StrictRequestModel


class InstanceState(StrEnum):
    """Our state of an instance (what the API returns in `state`)."""

    PENDING = "pending"  # accepted and queued; nothing exists on Novita yet
    PROVISIONING = "provisioning"
    RUNNING = "running"
    STARTING = "starting"
    STOPPING = "stopping"
    STOPPED = "stopped"
    RESTARTING = "restarting"
    DELETING = "deleting"
    DELETED = "deleted"
    UPDATING = "updating"
    FROZEN = "frozen"
    FAILED = "failed"
    UNKNOWN = "unknown"  # a Novita status this service does not know yet


NOVITA_STATUS_TO_STATE: dict[str, InstanceState] = {
    # Novita v1 status -> our state.  A non-empty `statusError` overrides all of these with `failed`.
    "toCreate": InstanceState.PROVISIONING,
    "creating": InstanceState.PROVISIONING,
    "pulling": InstanceState.PROVISIONING,  # billing starts here
    "running": InstanceState.RUNNING,
    "toStart": InstanceState.STARTING,
    "starting": InstanceState.STARTING,
    "toStop": InstanceState.STOPPING,
    "stopping": InstanceState.STOPPING,
    "exited": InstanceState.STOPPED,  # GPU billing off; storage still billed; data kept at most 7 days
    "toRestart": InstanceState.RESTARTING,
    "restarting": InstanceState.RESTARTING,
    "toRemove": InstanceState.DELETING,
    "removing": InstanceState.DELETING,
    "removed": InstanceState.DELETED,
    "toReset": InstanceState.UPDATING,
    "resetting": InstanceState.UPDATING,
    "migrating": InstanceState.UPDATING,
    "freezing": InstanceState.FROZEN,
}


def state_from_novita(status: str | None, status_error: str | None) -> InstanceState:
    """Our state for a Novita status and its error text (`statusError.message`, empty when none)."""
    if status_error:
        return InstanceState.FAILED
    if status is None:
        return InstanceState.UNKNOWN
    return NOVITA_STATUS_TO_STATE.get(status, InstanceState.UNKNOWN)


BillingMode = Literal["onDemand", "spot", "monthly"]

# Letters, digits and hyphens only (what Novita accepts in names), starting with a letter or digit.  The limit leaves
# room for the "-<record id>" suffix of the upstream name.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9-]{0,62}$"
RESERVED_PORTS = frozenset({2222, 2223, 2224})  # Novita's SSH and tool ports
MAX_PORTS = 15  # Novita: ports + tools together at most 15


def _not_reserved(port: int) -> int:
    if port in RESERVED_PORTS:
        raise ValueError(f"port {port} is reserved by Novita (2222-2224)")
    return port


# A port the instance exposes (its own or a tool's), and how Novita exposes it.
ExposablePort = Annotated[int, Field(ge=1, le=65535), AfterValidator(_not_reserved)]
PortType = Literal["tcp", "http"]


class PortSpec(StrictRequestModel):
    """One exposed port of the container."""

    port: ExposablePort
    type: PortType = "http"


class EnvVar(StrictRequestModel):
    """One environment variable.  `secret` values are sent to Novita but never stored in records nor returned."""

    key: str = Field(min_length=1, max_length=511, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    value: str = Field(default="", max_length=4095)
    secret: bool = False


# Where one instance's events go besides the global webhook (checked again by the webhook guard when set).
WebhookUrl = Annotated[str, Field(max_length=2048, pattern=r"^https?://\S+$")]


class ToolSpec(StrictRequestModel):
    """A tool Novita runs beside the image on its own port; Jupyter is the only one Novita offers."""

    name: Literal["Jupyter"] = "Jupyter"
    port: ExposablePort
    type: PortType = "http"


class NetworkStorageSpec(StrictRequestModel):
    """A Novita network volume to mount (it must be in the instance's cluster); it keeps its data across stops,
    deletes and migrations, unlike the instance's own disks."""

    id: str = Field(min_length=1, max_length=255, description="the network storage's id on Novita")
    mount_point: str = Field(default="/network", min_length=2, max_length=4095, pattern=r"^/\S*$")


_CROSS_CHECKED = {"image_url": "imageUrl", "product_id": "productId", "months": "months"}
# Context of `CreateInstanceRequest.model_dump` that writes secrets in clear: only for the create spec in Valkey.
REVEAL_SECRETS = {"reveal_secrets": True}


class CreateInstanceRequest(StrictRequestModel):
    """Body of `POST /api/instances`."""

    name: str = Field(pattern=NAME_PATTERN, description="letters, digits and hyphens, 1-63 characters")
    product_name: str | None = Field(
        default=None,
        min_length=1,
        max_length=255,
        description="GPU product by name, e.g. 'RTX 4090 24GB' (cheapest available)",
    )
    product_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=255,
        description="GPU product by id (exactly one of productName, productId)",
    )
    gpu_num: int = Field(default=1, ge=1, le=8)
    rootfs_size: int = Field(default=60, ge=10, le=6144, description="GB")
    template_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=255,
        description="Novita template: its image, ports, envs and command are defaults",
    )
    image_url: str | None = Field(
        default=None, min_length=1, max_length=500, pattern=r"^\S+$", description="required unless templateId is given"
    )
    image_auth_id: str | None = Field(
        default=None, min_length=1, max_length=255, description="id (or name) of a registry auth saved on Novita"
    )
    image_auth: SecretStr | None = Field(
        default=None,
        min_length=3,
        max_length=10239,
        description="`username:password` of a private registry, instead of "
        "imageAuthId; a secret: never stored in records, logged or "
        "returned",
    )
    ports: list[PortSpec] = Field(default_factory=list, max_length=MAX_PORTS)
    tools: list[ToolSpec] = Field(
        default_factory=list, max_length=1, description="Jupyter on its own port; ports and tools together at most 15"
    )
    envs: list[EnvVar] = Field(default_factory=list, max_length=100)
    command: str | None = Field(default=None, max_length=2047)
    entrypoint: str | None = Field(
        default=None, min_length=1, max_length=2047, description="replaces the image's ENTRYPOINT"
    )
    network_storages: list[NetworkStorageSpec] = Field(default_factory=list, max_length=30)
    min_cuda_version: str | None = Field(
        default=None,
        pattern=r"^\d{1,2}\.\d{1,2}$",
        description="e.g. '12.4': only nodes with this CUDA or newer; an offer whose nodes are older is skipped",
    )
    cluster_ids: list[str] = Field(
        default_factory=list,
        max_length=16,
        description="clusters in order of preference; the next is tried when one has no capacity; empty = any cluster",
    )
    billing_mode: BillingMode = "onDemand"
    months: int | None = Field(
        default=None, ge=1, le=36, description="required with, and only with, billingMode 'monthly'"
    )
    webhook_url: WebhookUrl | None = Field(
        default=None,
        description=(
            "this instance's events are also sent here, signed like the global webhook (needs WEBHOOK_SECRET); in "
            "production it must resolve to public addresses"
        ),
    )
    auto_migrate: bool = Field(
        default=False,
        description=(
            "spot only: when Novita reclaims the instance, migrate it to other hardware (if the deployment enables "
            "spot recovery). Migration LOSES the data on the instance's own disks (system and local disk); only "
            "network storage keeps it. Off by default."
        ),
    )

    @field_validator("image_url")
    @classmethod
    def _image_or_template(cls, image_url: str | None, info: ValidationInfo) -> str | None:
        if image_url is None and info.data.get("template_id") is None and "template_id" in info.data:
            raise ValueError("imageUrl is required unless templateId is given")
        return image_url

    @field_validator("ports")
    @classmethod
    def _unique_ports(cls, ports: list[PortSpec]) -> list[PortSpec]:
        numbers = [p.port for p in ports]
        if len(numbers) != len(set(numbers)):
            raise ValueError("each port may appear only once")
        return ports

    @field_validator("tools")
    @classmethod
    def _tool_ports_free(cls, tools: list[ToolSpec], info: ValidationInfo) -> list[ToolSpec]:
        ports = {p.port for p in info.data.get("ports", [])}
        if any(tool.port in ports for tool in tools):
            raise ValueError("a tool's port must not also be in ports")
        if len(ports) + len(tools) > MAX_PORTS:
            raise ValueError(f"ports and tools together at most {MAX_PORTS}")
        return tools

    @field_validator("envs")
    @classmethod
    def _unique_env_keys(cls, envs: list[EnvVar]) -> list[EnvVar]:
        keys = [e.key for e in envs]
        if len(keys) != len(set(keys)):
            raise ValueError("each env key may appear only once")
        return envs

    @field_validator("cluster_ids")
    @classmethod
    def _clean_clusters(cls, cluster_ids: list[str]) -> list[str]:
        if any(not c or len(c) > 255 for c in cluster_ids):
            raise ValueError("cluster ids must be 1-255 characters")
        if len(cluster_ids) != len(set(cluster_ids)):
            raise ValueError("each cluster may appear only once")
        return cluster_ids

    @model_validator(mode="before")
    @classmethod
    def _cross_checked_fields_present(cls, data: Any) -> Any:
        """Give the cross-checked optional fields an explicit null, so their validators always run and a 422 names
        the field by its wire name (a validated default would be reported under its Python name)."""
        if not isinstance(data, dict):
            return data
        missing = {alias: None for name, alias in _CROSS_CHECKED.items() if name not in data and alias not in data}
        return {**data, **missing}

    # Cross-field rules sit on the later field so that a 422 names a field, not the whole body.
    @field_validator("product_id")
    @classmethod
    def _exactly_one_product(cls, product_id: str | None, info: ValidationInfo) -> str | None:
        if "product_name" in info.data and (info.data["product_name"] is None) == (product_id is None):
            raise ValueError("give exactly one of productName or productId")
        return product_id

    @field_validator("months")
    @classmethod
    def _months_only_for_monthly(cls, months: int | None, info: ValidationInfo) -> int | None:
        if "billing_mode" in info.data and (info.data["billing_mode"] == "monthly") != (months is not None):
            raise ValueError("months is required with billingMode 'monthly' and allowed only with it")
        return months

    @field_validator("image_auth")
    @classmethod
    def _one_registry_auth(cls, image_auth: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if image_auth is not None and info.data.get("image_auth_id") is not None:
            raise ValueError("give imageAuth or imageAuthId, not both")
        if image_auth is not None and ":" not in image_auth.get_secret_value():
            raise ValueError("imageAuth must be 'username:password'")
        return image_auth

    @field_validator("auto_migrate")
    @classmethod
    def _migrate_only_spot(cls, auto_migrate: bool, info: ValidationInfo) -> bool:
        if auto_migrate and info.data.get("billing_mode", "spot") != "spot":
            raise ValueError("autoMigrate applies only to billingMode 'spot'")
        return auto_migrate

    @field_serializer("image_auth", when_used="json")
    def _image_auth_masked(self, image_auth: SecretStr | None, info: FieldSerializationInfo) -> str | None:
        if image_auth is None:
            return None
        return image_auth.get_secret_value() if (info.context or {}).get("reveal_secrets") else str(image_auth)

    def fingerprint(self) -> str:
        """A digest of the request's meaning, to tell a replay (same Idempotency-Key) from a different request."""
        canonical = json.dumps(
            self.model_dump(mode="json", context=REVEAL_SECRETS), sort_keys=True, separators=(",", ":")
        )
        return hashlib.sha256(canonical.encode()).hexdigest()


class InstanceEvent(ApiModel):
    """One automatic action taken on an instance (kept short: the latest `MAX_EVENTS`)."""

    at: float
    action: str
    detail: str = ""
    job_id: str | None = None


MAX_EVENTS = 20


class ExposedPort(ApiModel):
    """A port of the instance and the public address Novita maps it to."""

    port: int | None = None
    type: str | None = Field(None, description="tcp or http")
    endpoint: str


class ConnectionDetails(ApiModel):
    """How a person reaches the machine, from Novita's instance data.  Novita's SSH and web-terminal passwords are
    never read, so they cannot appear here."""

    ssh_command: str | None = Field(None, description="e.g. ssh root@proxy.us-ca-6.gpu-instance.novita.ai -p 32787")
    jupyter_url: str | None = None
    web_terminal_url: str | None = None
    ports: list[ExposedPort] = Field(default_factory=list, description="exposed ports with their public endpoints")


class InstanceRecord(BaseModel):
    """What we store per instance.  Never holds a secret: env values and registry credentials are not kept here."""

    id: str
    name: str
    upstream_name: str  # unique on Novita, derived from `id`: how we find it again after an ambiguous create
    team: str | None = None  # the owner: the team of the key that created it; None = adopted, admins only
    novita_instance_id: str | None = None
    state: InstanceState = InstanceState.PENDING
    novita_status: str | None = None
    status_error: str | None = None
    product_id: str | None = None
    product_name: str | None = None
    gpu_num: int
    rootfs_size: int
    image_url: str | None = None
    template_id: str | None = None
    cluster_preference: list[str] = Field(default_factory=list)
    cluster_id: str | None = None
    billing_mode: BillingMode
    auto_migrate: bool = False  # spot recovery may migrate it (losing its local disks' data): opt-in per instance
    ports: list[PortSpec] = Field(default_factory=list)
    env_keys: list[str] = Field(default_factory=list)
    endpoints: list[dict[str, Any]] = Field(default_factory=list)
    connection: ConnectionDetails | None = None  # as Novita last reported it (the sync keeps it current)
    ready_at: float | None = None  # every exposed port answered since the instance last became `running`
    created_at: float
    updated_at: float
    # Set just before the first create call: a later run looks the upstream name up only if this is set.
    create_attempted_at: float | None = None
    last_job_id: str | None = None
    events: list[InstanceEvent] = Field(default_factory=list)
    # The cost meter (app/fleet/meter.py): prices fixed when Novita accepted the create (USD per hour, exact decimal
    # strings; None: unknown, e.g. prepaid monthly or adopted), the open interval, and the closed seconds per state.
    price_per_hour: str | None = None
    storage_price_per_hour: str | None = None
    billing_state: str = "none"
    billing_since: float | None = None
    billed_seconds: dict[str, float] = Field(default_factory=dict)

    def add_event(self, action: str, detail: str = "", job_id: str | None = None) -> None:
        """Append an automatic action to the history, keeping only the latest ones."""
        self.events.append(InstanceEvent(at=time.time(), action=action, detail=detail, job_id=job_id))
        del self.events[:-MAX_EVENTS]

    def has_event(self, action: str, job_id: str) -> bool:
        """Whether this job already recorded `action` (lets a retried job skip a step it already did)."""
        return any(e.action == action and e.job_id == job_id for e in self.events)

    def apply_novita(self, status: str | None, status_error: str | None) -> None:
        """Take Novita's view of the instance as ours."""
        self.novita_status = status
        self.status_error = status_error or None
        self.state = state_from_novita(status, status_error)
        if self.state != InstanceState.RUNNING:
            self.ready_at = None  # readiness is proven again after every start


class InstanceView(ApiModel):
    """An instance as the API returns it: our record, or an instance found on Novita that we did not create."""

    id: str | None = Field(description="our record id; null for an instance created outside this service")
    managed: bool
    name: str
    upstream_name: str | None = None
    team: str | None = Field(
        None, description="the owning team; null: unowned (adopted or made elsewhere), admins only"
    )
    novita_instance_id: str | None = None
    state: InstanceState
    novita_status: str | None = None
    status_error: str | None = None
    product_id: str | None = None
    product_name: str | None = None
    gpu_num: int | None = None
    rootfs_size: int | None = None
    cluster_id: str | None = None
    cluster_preference: list[str] = Field(default_factory=list)
    billing_mode: str | None = None
    auto_migrate: bool = Field(
        False,
        description="a reclaimed spot instance is migrated (data on its own disks "
        "is lost) when the deployment enables spot recovery",
    )
    image_url: str | None = None
    template_id: str | None = None
    ports: list[PortSpec] = Field(default_factory=list)
    env_keys: list[str] = Field(default_factory=list)
    endpoints: list[dict[str, Any]] = Field(default_factory=list)
    ready_at: float | None = Field(None, description="when every exposed port answered (readiness); null: not ready")
    created_at: float | None = None
    updated_at: float | None = None
    last_job_id: str | None = None
    events: list[InstanceEvent] = Field(default_factory=list)
    synced_at: float | None = Field(
        None, description="when the background sync last saw it on Novita (Unix seconds); null: not seen yet"
    )
    connection: ConnectionDetails | None = Field(
        None, description="SSH, Jupyter, web terminal and port endpoints; null while Novita's data is not at hand"
    )
    price_per_hour: str | None = Field(
        None,
        description="USD per hour while running (GPU price x gpuNum, fixed at create; exact decimal); null: unknown",
    )
    cost_so_far: str | None = Field(
        None, description="USD billed so far by our estimate (README: costs); null for instances made elsewhere"
    )
    billed_seconds: dict[str, float] = Field(
        default_factory=dict, description="seconds billed per billing state (compute, storage), the open one included"
    )

    @classmethod
    def from_record(
        cls, record: InstanceRecord, *, synced_at: float | None = None, now: float | None = None
    ) -> InstanceView:
        """The view of one of our records, its cost counted until `now` (default: the wall clock)."""
        from app.fleet import meter  # the meter reads records: imported here, where both exist

        at = time.time() if now is None else now
        billed = dict(record.billed_seconds)
        running = meter.open_segment(record, at)
        if running is not None:
            billed[running.state.value] = billed.get(running.state.value, 0.0) + running.seconds
        # Validated from the record's own values, not from `record.model_dump()`: its nested models are taken as they
        # are, which makes a view 3x cheaper (6 us; `model_construct` takes 26 us), and lists build up to 100 a request.
        return cls.model_validate(
            {
                "managed": True,
                "synced_at": synced_at,
                "cost_so_far": meter.shown(meter.cost_so_far(record, at)),
                "billed_seconds": billed,
                **{name: getattr(record, name) for name in VIEW_FIELDS_FROM_RECORD},
            }
        )


# The record fields a view shows as they are (billed seconds are shown with the open interval added).
VIEW_FIELDS_FROM_RECORD = tuple(
    name for name in InstanceView.model_fields if name in InstanceRecord.model_fields and name != "billed_seconds"
)


class HeartbeatView(ApiModel):
    """The answer to a heartbeat: idle auto-stop counts from `last_used_at` (Unix seconds)."""

    instance_id: str
    last_used_at: float


class AcceptedResponse(ApiModel):
    """The 202 answer: the record as it is now and the job that will carry out the request."""

    instance: InstanceView
    job_id: str


class InstancePage(ApiModel):
    """One page of `GET /api/instances`."""

    items: list[InstanceView]
    total: int
    page: int
    page_size: int
    next_cursor: str | None = Field(
        None,
        description="pass as `cursor` for the next page (stable while instances "
        "are created or deleted); null on the last page",
    )
    novita_synced: bool = Field(
        description="false when the last background sync could not reach Novita (or none "
        "finished yet): states may be stale; see each item's syncedAt"
    )
    last_synced_at: float | None = Field(None, description="when the last successful background sync finished")
