"""Pydantic models of the Novita v1 wire format (reference §1.3-1.7).

Every answer model ignores unknown fields and defaults missing ones, because the documented samples and the real
answers disagree (numbers sent as strings, ``regions`` sent as ``{}``, ``Id`` vs ``id``). Secrets that Novita
returns (SSH and web-terminal passwords) are not modelled, so they are dropped at parse time and can never reach
a log, a cache or an API answer; the registry-auth password is a ``SecretStr``.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AliasChoices, BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, field_validator
from pydantic.alias_generators import to_camel

# Statuses in which an instance is gone or going away; a name lookup ignores them (reference §1.6).
REMOVAL_STATUSES = frozenset({"toRemove", "removing", "removed"})
BillingMode = Literal["onDemand", "monthly", "spot"]


def _blank_to_none(value: Any) -> Any:
    """Novita sends numbers as strings and sometimes ``""`` for "no value"."""
    return None if value == "" else value


def _list_or_empty(value: Any) -> Any:
    """A list field that Novita may send as ``null`` or ``{}`` (the product ``regions`` sample)."""
    return value if isinstance(value, list) else []


OptionalFloat = Annotated[float | None, BeforeValidator(_blank_to_none)]
OptionalInt = Annotated[int | None, BeforeValidator(_blank_to_none)]
OptionalStr = Annotated[str | None, BeforeValidator(lambda value: None if value is None else str(value))]
Item = TypeVar("Item")
LenientList = Annotated[list[Item], BeforeValidator(_list_or_empty)]


class NovitaModel(BaseModel):
    """Base of the answer models: camelCase on the wire, snake_case in Python, tolerant of extra fields."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class MonthlyPrice(NovitaModel):
    """One subscription option of a product."""

    price: OptionalFloat = None
    month: OptionalInt = None


class Product(NovitaModel):
    """A GPU product (GPU type in a cluster). Prices are raw Novita units (the SDK reads them as 1/100000 USD/h)."""

    id: str
    name: str = ""
    cpu_per_gpu: OptionalInt = None
    memory_per_gpu: OptionalInt = None
    disk_per_gpu: OptionalInt = None
    available_deploy: bool = False
    min_root_fs: OptionalInt = Field(default=None, alias="minRootFS")
    max_root_fs: OptionalInt = Field(default=None, alias="maxRootFS")
    min_local_storage: OptionalInt = None
    max_local_storage: OptionalInt = None
    regions: LenientList[str] = []
    price: OptionalFloat = None
    spot_price: OptionalFloat = None
    monthly_price: LenientList[MonthlyPrice] = []
    billing_methods: LenientList[str] = []
    inventory_state: str | None = None
    available_gpu_number: OptionalInt = None


class Cluster(NovitaModel):
    """A Novita cluster (region), e.g. ``us-ca-6``."""

    id: str
    name: str = ""
    available_gpu_type: LenientList[str] = []
    support_network_storage: bool = False
    support_instance_network: bool = False


class StatusError(NovitaModel):
    """Novita's failure signal: there is no ``failed`` status, an instance carries a non-empty statusError."""

    state: str = ""
    message: str = ""


class PortMapping(NovitaModel):
    """A port the instance exposes, with its public endpoint once running."""

    port: OptionalInt = None
    endpoint: str | None = None
    type: str | None = None


class EnvVar(NovitaModel):
    """An environment variable of an instance or template."""

    key: str
    value: str = ""


class SshComponent(NovitaModel):
    """SSH access details without the password (which is deliberately not modelled)."""

    ssh_command: str | None = None
    is_running: bool | None = None


class WebTerminalComponent(NovitaModel):
    """The browser terminal's address and user, without the password (which is deliberately not modelled)."""

    address: str | None = None
    username: str | None = None
    is_running: bool | None = None


class JupyterComponent(NovitaModel):
    """The Jupyter server Novita runs for the instance, when one was asked for."""

    address: str | None = None
    port: OptionalInt = None
    is_running: bool | None = None


class Instance(NovitaModel):
    """A GPU instance as Novita reports it (list item or single get)."""

    id: str
    name: str = ""
    status: str = ""
    status_error: StatusError | None = None
    cluster_id: str | None = None
    cluster_name: str | None = None
    product_id: str | None = None
    product_name: str | None = None
    image_url: str | None = None
    image_auth_id: str | None = None
    command: str | None = None
    kind: str | None = None
    cpu_num: OptionalStr = None
    memory: OptionalStr = None
    gpu_num: OptionalInt = None
    rootfs_size: OptionalInt = None
    port_mappings: LenientList[PortMapping] = []
    envs: LenientList[EnvVar] = []
    billing_mode: str | None = None
    spot_status: str | None = None
    spot_reclaim_time: OptionalStr = None
    end_time: OptionalStr = None
    created_at: OptionalStr = None  # Unix seconds, sent as a string
    last_started_at: OptionalStr = None
    last_stopped_at: OptionalStr = None
    template_id: str | None = None
    connect_component_ssh: SshComponent | None = Field(default=None, alias="connectComponentSSH")
    connect_component_web_terminal: WebTerminalComponent | None = None
    connect_component_jupyter: JupyterComponent | None = None

    @property
    def failed(self) -> bool:
        """True when Novita reports an error for this instance."""
        return self.status_error is not None and bool(self.status_error.state or self.status_error.message)

    @property
    def error_text(self) -> str | None:
        """Novita's error text (`statusError.message`, else its state), or None when it reports no error."""
        if not self.failed or self.status_error is None:
            return None
        return self.status_error.message or self.status_error.state

    @property
    def removed(self) -> bool:
        """True when the instance is deleted or being deleted."""
        return self.status in REMOVAL_STATUSES


class TemplatePorts(NovitaModel):
    """A template's ports of one type, e.g. ``{"type": "http", "ports": [8888]}``."""

    type: str = "tcp"
    ports: LenientList[int] = []


class Template(NovitaModel):
    """A saved instance template. ``image_auth`` holds a registry-auth id, not credentials."""

    id: str = Field(validation_alias=AliasChoices("Id", "id"), serialization_alias="id")
    name: str = ""
    type: str | None = None
    channel: str | None = None
    image: str | None = None
    image_auth: str | None = None
    start_command: str | None = None
    rootfs_size: OptionalInt = None
    ports: LenientList[TemplatePorts] = []
    envs: LenientList[EnvVar] = []

    def ports_spec(self) -> str:
        """The template's ports in the create-instance format, e.g. ``"8888/http,22/tcp"``."""
        return ",".join(f"{port}/{group.type}" for group in self.ports for port in group.ports)


class RegistryAuth(NovitaModel):
    """Saved container-registry credentials; the password is masked in ``repr`` and logs."""

    id: str
    name: str = ""
    username: str = ""
    password: SecretStr = SecretStr("")


_PORT_SPEC = re.compile(r"^(\d{1,5})/(tcp|http)$")
_RESERVED_PORTS = frozenset({2222, 2223, 2224})
_MAX_PORTS = 15


class NetworkStorageMount(BaseModel):
    """A network volume to mount; Novita spells the id field ``Id``."""

    model_config = ConfigDict(populate_by_name=True)

    id: str = Field(alias="Id", min_length=1)
    mount_point: str = Field(default="/network", alias="mountPoint", min_length=1, max_length=4095)


class JupyterTool(BaseModel):
    """A tool Novita runs beside the image; Jupyter is the only one its docs name. ``port`` is a string on the wire."""

    model_config = ConfigDict(extra="forbid")

    name: Literal["Jupyter"] = "Jupyter"
    port: str = Field(pattern=r"^\d{1,5}$")
    type: Literal["tcp", "http"] = "http"


class CreateInstanceRequest(BaseModel):
    """Body of ``POST /gpu/instance/create`` (reference §1.4), validated before it is sent.

    ``name`` is required (Novita makes it optional) because the client finds an instance by its unique name after
    an ambiguous create failure. Dump it with ``to_wire()``.
    """

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    name: str = Field(min_length=1, max_length=255)
    product_id: str = Field(min_length=1, max_length=255)
    gpu_num: int = Field(ge=1, le=8)
    rootfs_size: int = Field(ge=10, le=6144)
    image_url: str = Field(min_length=1, max_length=500)
    image_auth_id: str | None = None
    image_auth: SecretStr | None = Field(default=None, description="`user:password` of a private registry")
    ports: str | None = None
    envs: list[EnvVar] | None = Field(default=None, max_length=100)
    command: str | None = Field(default=None, max_length=2047)
    entrypoint: str | None = Field(default=None, max_length=2047)
    tools: list[JupyterTool] | None = None
    cluster_id: str | None = None
    network_storages: list[NetworkStorageMount] | None = Field(default=None, max_length=30)
    network_id: str | None = None
    kind: Literal["gpu", "cpu"] = "gpu"
    month: int | None = Field(default=None, ge=0)
    billing_mode: BillingMode | None = None
    auto_renew: bool | None = None
    auto_renew_month: int | None = Field(default=None, ge=1, le=12)
    min_cuda_version: str | None = None

    @field_validator("ports")
    @classmethod
    def _check_ports(cls, value: str | None) -> str | None:
        """Ports as Novita wants them, ``"80/http,3306/tcp"``: 1-65535, not 2222-2224, at most 15."""
        if value is None or not value.strip():
            return None
        specs = [part.strip() for part in value.split(",")]
        if len(specs) > _MAX_PORTS:
            raise ValueError(f"at most {_MAX_PORTS} ports are allowed, got {len(specs)}")
        for spec in specs:
            match = _PORT_SPEC.match(spec)
            if not match:
                raise ValueError(f"port {spec!r} must look like '8080/http' or '22/tcp'")
            port = int(match.group(1))
            if not 1 <= port <= 65535:
                raise ValueError(f"port {port} is outside 1-65535")
            if port in _RESERVED_PORTS:
                raise ValueError(f"port {port} is reserved by Novita (2222-2224)")
        return ",".join(specs)

    def to_wire(self) -> dict[str, Any]:
        """The JSON body Novita expects: camelCase keys, unset fields left out, ``imageAuth`` in clear (only here)."""
        body = self.model_dump(by_alias=True, exclude_none=True, exclude={"image_auth"})
        if self.image_auth is not None:
            body["imageAuth"] = self.image_auth.get_secret_value()
        return body
