"""Every stack config key the program reads: its type, default, check and error message.

`StackSettings.from_config()` turns the stack's config into one frozen, validated object with canonical
values (durations as Docker reads them back, `cpus` as the provider writes it), so that the components never
read config themselves and a second `pulumi up` shows no drift. Bad config raises `StackConfigError`, naming
the key and what is allowed, before any resource is registered.
"""
from __future__ import annotations

import ipaddress
import json
import re
import shlex
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Literal, Optional, Union

import pulumi
from pulumi.runtime import get_config_secret_keys_env, is_config_secret

PROJECT = "novita-gpu-api"
RESTART_POLICIES = ("no", "on-failure", "always", "unless-stopped")
VALKEY_MODES = ("local", "aiven")
NETWORK_MODES = ("bridge", "host")
APP_ENVS = ("development", "production")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
MIN_MEMORY_MB = 128

ConfigType = Literal["string", "integer", "boolean", "array"]
ConfigValue = Union[str, int, bool, list]


@dataclass(frozen=True)
class ConfigKey:
    """One stack config key. `default=None` means required; `Pulumi.yaml` declares the same (a test checks)."""

    type: ConfigType
    default: Optional[ConfigValue]
    description: str
    secret: bool = False


# The single table of keys. Pulumi.yaml's `config:` block must match it (tests/infra/test_settings.py checks).
# Optional secrets carry an empty default and no `secret: true` in Pulumi.yaml, because the CLI refuses a
# plain default on a secret key; the program itself refuses them unless set with `pulumi config set --secret`.
KEYS: dict[str, ConfigKey] = {
    "appEnv": ConfigKey("string", "development", "APP_ENV of the API: development or production (production rules apply)"),
    "logLevel": ConfigKey("string", "INFO", "LOG_LEVEL of the API: DEBUG, INFO, WARNING or ERROR"),
    "novitaBaseUrl": ConfigKey("string", "https://api.novita.ai/gpu-instance/openapi/v1", "Novita v1 base URL"),
    "faultInjection": ConfigKey("boolean", False, "Enable the API's /debug fault endpoints (refused in production)"),
    "containerName": ConfigKey("string", "novita-gpu-instance-api", "Name prefix of the API replicas (<name>-<i>-<suffix>); the exact container name with networkMode host"),
    "apiPort": ConfigKey("integer", 3003, "Host port of the API (1-65535)"),
    "apiHostAddress": ConfigKey("string", "127.0.0.1", "Address the API is reachable at: the published port's IP (bridge) or the listen address (host)"),
    "networkMode": ConfigKey("string", "bridge", "bridge: a private Docker network for the API and local Valkey; host: the host's network (tests)"),
    "networkName": ConfigKey("string", "novita-gpu-api", "Name of the private Docker network (bridge mode)"),
    "restartPolicy": ConfigKey("string", "unless-stopped", "Docker restart policy: no, on-failure, always or unless-stopped (production: always)"),
    "healthcheckInterval": ConfigKey("string", "30s", "Container healthcheck interval (Go duration)"),
    "healthcheckTimeout": ConfigKey("string", "10s", "Container healthcheck timeout, shorter than the interval"),
    "healthcheckRetries": ConfigKey("integer", 5, "Consecutive failures before unhealthy (>= 1); also HEALTHCHECK_KILL_AFTER"),
    "healthcheckStartPeriod": ConfigKey("string", "60s", "Grace period after start before failures count"),
    "healthcheckStartInterval": ConfigKey("string", "", "Probe interval during the start period; empty = off (needs Docker Engine 25+)"),
    "memoryMb": ConfigKey("integer", 512, "Memory limit of the API container in MB (>= 128); swap is disabled"),
    "cpus": ConfigKey("string", "0.5", "CPU limit of the API container (e.g. 0.5)"),
    "stopGraceSeconds": ConfigKey("integer", 30, "Seconds between SIGTERM and SIGKILL on stop, for in-flight work"),
    "logMaxSize": ConfigKey("string", "10m", "json-file log rotation: size of one file"),
    "logMaxFile": ConfigKey("integer", 3, "json-file log rotation: number of files kept"),
    "containerHardening": ConfigKey("boolean", True, "Read-only rootfs, tmpfs /tmp, no-new-privileges, no capabilities, non-root user, process limit"),
    "containerUser": ConfigKey("string", "10001:10001", "uid:gid the API runs as when hardening is on"),
    "tmpfsSizeMb": ConfigKey("integer", 64, "Size of the /tmp tmpfs in MB when hardening is on"),
    "pidsLimit": ConfigKey("integer", 256, "Process/thread limit of the API user (ulimit nproc) when hardening is on"),
    "imageName": ConfigKey("string", "novita-gpu-api:latest", "Name:tag of the API image built from app/"),
    "baseImage": ConfigKey("string", "python:3.11-slim", "BASE_IMAGE build arg of app/Dockerfile (a mirror or a local image)"),
    "imagePlatform": ConfigKey("string", "linux/amd64", "Platform the API image is built for"),
    "imagePush": ConfigKey("boolean", False, "Push the API image to registryServer (imageName must start with it)"),
    "registryServer": ConfigKey("string", "", "Registry host for imagePush"),
    "registryUsername": ConfigKey("string", "", "Registry user for imagePush"),
    "registryPassword": ConfigKey("string", "", "Registry password for imagePush (secret)", secret=True),
    "valkeyMode": ConfigKey("string", "local", "local: a Valkey container; aiven: Aiven for Valkey"),
    "valkeyImage": ConfigKey("string", "valkey/valkey:8-alpine", "Image of the local Valkey"),
    "valkeyPullImage": ConfigKey("boolean", True, "Pull valkeyImage (false: use a locally built image as is)"),
    "valkeyPort": ConfigKey("integer", 6379, "Port of the local Valkey (1-65535)"),
    "valkeyContainerName": ConfigKey("string", "novita-gpu-api-valkey", "Name of the local Valkey container; its volume is <name>-data"),
    "valkeyServerBinary": ConfigKey("string", "valkey-server", "Server binary of the local Valkey image (redis-server for a Redis image)"),
    "valkeyCliBinary": ConfigKey("string", "valkey-cli", "CLI used by the local Valkey healthcheck (redis-cli for a Redis image)"),
    "aivenProject": ConfigKey("string", "", "Aiven project (required in aiven mode)"),
    "aivenCloud": ConfigKey("string", "google-europe-west1", "Aiven cloud/region"),
    "aivenPlan": ConfigKey("string", "startup-4", "Aiven for Valkey plan"),
    "aivenServiceName": ConfigKey("string", "novita-gpu-api-valkey", "Aiven service name"),
    "aivenMaintenanceDow": ConfigKey("string", "sunday", "Aiven maintenance window day (monday-sunday)"),
    "aivenMaintenanceTime": ConfigKey("string", "03:00:00", "Aiven maintenance window start, UTC HH:MM:SS"),
    "valkeyIpAllowList": ConfigKey("array", [], "CIDRs allowed to reach Aiven Valkey (required in aiven mode)"),
    "valkeyAllowAnyIp": ConfigKey("boolean", False, "Force-allow 0.0.0.0/0 on Aiven in production"),
    "valkeyAppUser": ConfigKey("string", "", "Aiven mode: a least-privilege Valkey ACL user the API connects as (ngpu:* keys, the commands it uses; password generated by Aiven); empty = the default admin user"),
    "novitaApiKey": ConfigKey("string", None, "Novita API key (secret)", secret=True),
    "apiKeys": ConfigKey("string", "", "Client API keys name:key,name:key (secret; required in production)", secret=True),
    "aivenToken": ConfigKey("string", "", "Aiven API token (secret; required in aiven mode)", secret=True),
}


class StackConfigError(pulumi.RunError):
    """Bad stack config. A RunError, so the CLI prints the message without a stack trace."""

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        super().__init__(f"invalid stack config {PROJECT}:{key}: {problem}")


# ---- canonical forms ---------------------------------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_MS = {"ms": Decimal(1), "s": Decimal(1000), "m": Decimal(60_000), "h": Decimal(3_600_000)}


def parse_duration_ms(text: str) -> int:
    """Parse a Go duration such as `90s`, `1m30s` or `500ms` into whole milliseconds; ValueError otherwise."""
    text = text.strip()
    if text == "0":
        return 0
    if not text or _DURATION_PART.sub("", text):
        raise ValueError(text)
    total = sum(Decimal(number) * _UNIT_MS[unit] for number, unit in _DURATION_PART.findall(text))
    if total != total.to_integral_value():
        raise ValueError(text)
    return int(total)


def go_duration(ms: int) -> str:
    """Format milliseconds the way Go's time.Duration.String does (Docker reads durations back in this form)."""
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds = format(Decimal(rest) / 1000, "f").rstrip("0").rstrip(".") if rest % 1000 else str(rest // 1000)
    if hours:
        return f"{hours}h{minutes}m{seconds}s"
    if minutes:
        return f"{minutes}m{seconds}s"
    return f"{seconds}s"


def canonical_cpus(text: str) -> str:
    """Format a CPU count the way the provider reads NanoCPUs back: 0.5 -> "0.5", 1 -> "1.0"; ValueError otherwise."""
    try:
        value = Decimal(text.strip())
    except InvalidOperation as exc:
        raise ValueError(text) from exc
    nano = value * 1_000_000_000
    if not value.is_finite() or value <= 0 or nano != nano.to_integral_value():
        raise ValueError(text)
    rendered = format(value.normalize(), "f")
    return rendered if "." in rendered else f"{rendered}.0"


# ---- the settings object -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class HealthcheckSettings:
    """The API container's healthcheck, durations in Go's canonical form."""

    interval: str
    timeout: str
    retries: int
    start_period: str
    start_interval: Optional[str]
    interval_ms: int
    timeout_ms: int
    start_period_ms: int

    tests: tuple[str, ...] = ("CMD", "python", "-m", "app.healthcheck")

    @property
    def probe_timeout_seconds(self) -> float:
        """HTTP timeout of the in-container probe: half the Docker timeout, so the probe records a failure (and can
        count towards the kill) before Docker gives up on it."""
        return self.timeout_ms / 2000

    @property
    def kill_after(self) -> int:
        """Failed probes before the probe kills the app: the same count that makes Docker mark it unhealthy."""
        return self.retries

    @property
    def wait_timeout_seconds(self) -> int:
        """How long `pulumi up` waits for healthy: start period plus one interval more than the retries allow."""
        return -(-(self.start_period_ms + self.interval_ms * (self.retries + 1)) // 1000)

    def summary(self) -> str:
        """One line for the stack output and the logs."""
        return (
            f"interval={self.interval} timeout={self.timeout} retries={self.retries} "
            f"start_period={self.start_period} start_interval={self.start_interval or 'off'}"
        )


@dataclass(frozen=True)
class HardeningSettings:
    """Container hardening of the API (issue 6 item 3)."""

    enabled: bool
    user: str
    tmpfs_size_mb: int
    pids_limit: int


@dataclass(frozen=True)
class ImageSettings:
    """How the API image is built and where it goes."""

    name: str
    base_image: str
    platform: str
    push: bool
    registry_server: str
    registry_username: str


@dataclass(frozen=True)
class LocalValkeySettings:
    """The dev Valkey container."""

    image: str
    pull_image: bool
    port: int
    container_name: str
    server_binary: str
    cli_binary: str

    @property
    def volume_name(self) -> str:
        """The named volume holding the Valkey data."""
        return f"{self.container_name}-data"


@dataclass(frozen=True)
class AivenValkeySettings:
    """The managed Aiven for Valkey service."""

    project: str
    cloud: str
    plan: str
    service_name: str
    maintenance_dow: str
    maintenance_time: str
    ip_allow_list: tuple[str, ...]
    app_user: str = ""  # empty: the API connects as Aiven's default (admin) user


@dataclass(frozen=True)
class Secrets:
    """Secret config values, as secret Outputs (never plain strings in the program)."""

    novita_api_key: pulumi.Output[str]
    api_keys: Optional[pulumi.Output[str]]
    aiven_token: Optional[pulumi.Output[str]]
    registry_password: Optional[pulumi.Output[str]]


@dataclass(frozen=True)
class StackSettings:
    """Everything the components need, validated and canonical. Build it with `StackSettings.from_config()`."""

    app_env: str
    log_level: str
    novita_base_url: str
    fault_injection: bool
    container_name: str
    api_port: int
    api_host_address: str
    network_mode: str
    network_name: str
    restart_policy: str
    healthcheck: HealthcheckSettings
    memory_mb: int
    cpus: str
    stop_grace_seconds: int
    log_max_size: str
    log_max_file: int
    hardening: HardeningSettings
    image: ImageSettings
    valkey_mode: str
    local_valkey: LocalValkeySettings
    aiven_valkey: AivenValkeySettings
    secrets: Secrets
    edge: "EdgeSettings"

    @property
    def is_production(self) -> bool:
        """Production rules (restart always, API keys, no fault injection, Aiven protection) apply."""
        return self.app_env == "production"

    @property
    def memory_swap_mb(self) -> int:
        """Equal to memory: no swap, and no drift against Docker's default of twice the memory."""
        return self.memory_mb

    @property
    def uses_host_network(self) -> bool:
        """Containers share the host's network (tests); nothing is published."""
        return self.network_mode == "host"

    @classmethod
    def from_config(cls, config: Optional[pulumi.Config] = None) -> "StackSettings":
        """Read and validate the current stack's config. Raises StackConfigError naming the first bad key."""
        read = _Reader(config or pulumi.Config())
        app_env = read.choice("appEnv", APP_ENVS)
        production = app_env == "production"
        valkey_mode = read.choice("valkeyMode", VALKEY_MODES)
        restart = read.choice("restartPolicy", RESTART_POLICIES)
        if production and restart != "always":
            raise StackConfigError("restartPolicy", f"production requires 'always' (got {restart!r})")
        fault_injection = read.boolean("faultInjection")
        if production and fault_injection:
            raise StackConfigError("faultInjection", "fault injection is refused when appEnv is production")
        image = _read_image(read, push=read.boolean("imagePush"))
        return cls(
            app_env=app_env,
            log_level=read.choice("logLevel", LOG_LEVELS),
            novita_base_url=read.url("novitaBaseUrl"),
            fault_injection=fault_injection,
            container_name=read.name("containerName"),
            api_port=read.port("apiPort"),
            api_host_address=read.ip_address("apiHostAddress"),
            network_mode=read.choice("networkMode", NETWORK_MODES),
            network_name=read.name("networkName"),
            restart_policy=restart,
            healthcheck=_read_healthcheck(read),
            memory_mb=read.integer("memoryMb", minimum=MIN_MEMORY_MB, unit=" MB"),
            cpus=read.cpus("cpus"),
            stop_grace_seconds=read.integer("stopGraceSeconds", minimum=1),
            log_max_size=read.matching("logMaxSize", r"[1-9]\d*[kmg]", "a size such as 10m (k, m or g)"),
            log_max_file=read.integer("logMaxFile", minimum=1),
            hardening=HardeningSettings(
                enabled=read.boolean("containerHardening"),
                user=read.matching("containerUser", r"[1-9]\d*(:\d+)?", "a non-root numeric uid[:gid] such as 10001:10001"),
                tmpfs_size_mb=read.integer("tmpfsSizeMb", minimum=1, unit=" MB"),
                pids_limit=read.integer("pidsLimit", minimum=16),
            ),
            image=image,
            valkey_mode=valkey_mode,
            local_valkey=LocalValkeySettings(
                image=read.text("valkeyImage"),
                pull_image=read.boolean("valkeyPullImage"),
                port=read.port("valkeyPort"),
                container_name=read.name("valkeyContainerName"),
                server_binary=read.word("valkeyServerBinary"),
                cli_binary=read.word("valkeyCliBinary"),
            ),
            aiven_valkey=_read_aiven(read, required=valkey_mode == "aiven", production=production),
            secrets=Secrets(
                novita_api_key=read.secret("novitaApiKey", required=True),
                api_keys=read.secret("apiKeys", required=production),
                aiven_token=read.secret("aivenToken", required=valkey_mode == "aiven"),
                registry_password=read.secret("registryPassword", required=image.push and bool(image.registry_username)),
            ),
            edge=_read_edge(read, network_mode=read.choice("networkMode", NETWORK_MODES), valkey_mode=valkey_mode),
        )


def _read_healthcheck(read: "_Reader") -> HealthcheckSettings:
    interval_ms = read.duration_ms("healthcheckInterval", positive=True)
    timeout_ms = read.duration_ms("healthcheckTimeout", positive=True)
    if timeout_ms >= interval_ms:
        raise StackConfigError(
            "healthcheckTimeout",
            f"must be shorter than healthcheckInterval ({go_duration(timeout_ms)} >= {go_duration(interval_ms)})",
        )
    start_period_ms = read.duration_ms("healthcheckStartPeriod", positive=False)
    start_interval = None  # off unless set: Docker Engine < 25 refuses the whole create
    if read.text("healthcheckStartInterval", allow_empty=True):
        start_interval = go_duration(read.duration_ms("healthcheckStartInterval", positive=True))
    return HealthcheckSettings(
        interval=go_duration(interval_ms),
        timeout=go_duration(timeout_ms),
        retries=read.integer("healthcheckRetries", minimum=1),
        start_period=go_duration(start_period_ms),
        start_interval=start_interval,
        interval_ms=interval_ms,
        timeout_ms=timeout_ms,
        start_period_ms=start_period_ms,
    )


def _read_image(read: "_Reader", push: bool) -> ImageSettings:
    name = read.text("imageName")
    server = read.text("registryServer", allow_empty=True)
    if push and not server:
        raise StackConfigError("registryServer", "required when imagePush is true")
    if push and not name.startswith(f"{server}/"):
        raise StackConfigError("imageName", f"must start with '{server}/' to be pushed to registryServer")
    return ImageSettings(
        name=name,
        base_image=read.text("baseImage"),
        platform=read.matching("imagePlatform", r"[a-z0-9]+/[a-z0-9_]+(/[a-z0-9]+)?", "os/arch such as linux/amd64"),
        push=push,
        registry_server=server,
        registry_username=read.text("registryUsername", allow_empty=True),
    )


def _read_aiven(read: "_Reader", required: bool, production: bool) -> AivenValkeySettings:
    allow_list = tuple(read.cidr_list("valkeyIpAllowList"))
    allow_any = read.boolean("valkeyAllowAnyIp")
    if required and not allow_list:
        raise StackConfigError("valkeyIpAllowList", "aiven mode needs at least one CIDR (Aiven's default is the whole internet)")
    opens_everything = any(ipaddress.ip_network(cidr).prefixlen == 0 for cidr in allow_list)
    if required and production and opens_everything and not allow_any:
        raise StackConfigError(
            "valkeyIpAllowList", "0.0.0.0/0 is refused in production unless valkeyAllowAnyIp is true"
        )
    return AivenValkeySettings(
        project=read.text("aivenProject", allow_empty=not required),
        cloud=read.text("aivenCloud"),
        plan=read.matching("aivenPlan", r"[a-z0-9-]+", "a lowercase plan such as startup-4"),
        service_name=read.matching("aivenServiceName", r"[a-z][a-z0-9-]{0,62}", "lowercase letters, digits and dashes"),
        maintenance_dow=read.choice("aivenMaintenanceDow", WEEKDAYS),
        maintenance_time=read.matching("aivenMaintenanceTime", r"([01]\d|2[0-3]):[0-5]\d:[0-5]\d", "UTC HH:MM:SS"),
        ip_allow_list=allow_list,
        app_user=_read_app_user(read, aiven_mode=required),
    )


def _read_app_user(read: "_Reader", aiven_mode: bool) -> str:
    user = read.text("valkeyAppUser", allow_empty=True)
    if user and not aiven_mode:
        raise StackConfigError("valkeyAppUser", "applies only with valkeyMode aiven (the local Valkey has no users)")
    if user and not re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", user):
        raise StackConfigError("valkeyAppUser", f"{user!r} is not allowed; expected 1-64 letters, digits, _ or -")
    if user == "default":
        raise StackConfigError("valkeyAppUser", "'default' is Aiven's admin user; name a new user, or leave it empty")
    return user


class _Reader:
    """Reads raw config strings with the defaults of KEYS and turns every problem into a StackConfigError."""

    def __init__(self, config: pulumi.Config) -> None:
        self._config = config

    def _raw(self, key: str) -> Optional[str]:
        spec = KEYS[key]
        value = self._config.get(key)
        if value is not None:
            return value
        if spec.default is None:
            return None
        if isinstance(spec.default, bool):
            return "true" if spec.default else "false"
        if isinstance(spec.default, list):
            return json.dumps(spec.default)
        return str(spec.default)

    def text(self, key: str, allow_empty: bool = False) -> str:
        value = (self._raw(key) or "").strip()
        if not value and not allow_empty:
            raise StackConfigError(key, "must not be empty")
        return value

    def choice(self, key: str, allowed: tuple[str, ...]) -> str:
        value = self.text(key, allow_empty=True)
        if value not in allowed:
            raise StackConfigError(key, f"{value!r} is not allowed; use one of: {', '.join(allowed)}")
        return value

    def matching(self, key: str, pattern: str, allowed: str) -> str:
        value = self.text(key, allow_empty=True)
        if not re.fullmatch(pattern, value):
            raise StackConfigError(key, f"{value!r} is not allowed; expected {allowed}")
        return value

    def name(self, key: str) -> str:
        return self.matching(key, r"[a-zA-Z0-9][a-zA-Z0-9_.-]*", "a Docker name (letters, digits, _ . -)")

    def word(self, key: str) -> str:
        value = self.text(key)
        if shlex.split(value) != [value]:
            raise StackConfigError(key, f"{value!r} is not allowed; expected one executable name")
        return value

    def url(self, key: str) -> str:
        return self.matching(key, r"https?://[^\s]+", "an http(s) URL")

    def boolean(self, key: str) -> bool:
        value = self.text(key, allow_empty=True).lower()
        if value not in ("true", "false"):
            raise StackConfigError(key, f"{value!r} is not allowed; use true or false")
        return value == "true"

    def integer(self, key: str, minimum: int, maximum: Optional[int] = None, unit: str = "") -> int:
        raw = self.text(key, allow_empty=True)
        try:
            value = int(raw)
        except ValueError:
            raise StackConfigError(key, f"{raw!r} is not a whole number") from None
        if value < minimum or (maximum is not None and value > maximum):
            allowed = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}{unit}"
            raise StackConfigError(key, f"{value}{unit} is not allowed; must be {allowed}")
        return value

    def port(self, key: str) -> int:
        return self.integer(key, minimum=1, maximum=65535)

    def cpus(self, key: str) -> str:
        raw = self.text(key, allow_empty=True)
        try:
            return canonical_cpus(raw)
        except ValueError:
            raise StackConfigError(key, f"{raw!r} is not allowed; must be a positive number of CPUs such as 0.5") from None

    def duration_ms(self, key: str, positive: bool) -> int:
        raw = self.text(key, allow_empty=True)
        try:
            value = parse_duration_ms(raw)
        except ValueError:
            raise StackConfigError(key, f"{raw!r} is not a duration; use e.g. 30s, 2m or 1m30s (ms, s, m, h)") from None
        if positive and value <= 0:
            raise StackConfigError(key, f"{raw!r} is not allowed; must be longer than 0s")
        return value

    def ip_address(self, key: str) -> str:
        raw = self.text(key)
        try:
            return str(ipaddress.ip_address(raw))
        except ValueError:
            raise StackConfigError(key, f"{raw!r} is not an IP address") from None

    def cidr_list(self, key: str) -> list[str]:
        raw = self.text(key, allow_empty=True) or "[]"
        try:
            items = json.loads(raw)
        except json.JSONDecodeError:
            raise StackConfigError(key, "must be a list of CIDRs, e.g. [\"203.0.113.10/32\"]") from None
        if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
            raise StackConfigError(key, "must be a list of CIDRs, e.g. [\"203.0.113.10/32\"]")
        try:
            return [str(ipaddress.ip_network(item, strict=False)) for item in items]
        except ValueError as exc:
            raise StackConfigError(key, f"not a CIDR: {exc}") from None

    def string_list(self, key: str) -> list[str]:
        raw = self.text(key, allow_empty=True) or "[]"
        try:
            items = json.loads(raw)
        except json.JSONDecodeError:
            items = None
        if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
            raise StackConfigError(key, "must be a list of strings")
        return [item.strip() for item in items]

    def secret(self, key: str, required: bool) -> Optional[pulumi.Output[str]]:
        value = self._config.get(key) or ""
        if not value:
            if required:
                raise StackConfigError(key, f"missing required secret; set it with: pulumi config set --secret {key}")
            return None
        full_key = self._config.full_key(key)
        if not (is_config_secret(full_key) or full_key in get_config_secret_keys_env()):
            raise StackConfigError(key, f"is stored in plain text; set it with: pulumi config set --secret {key}")
        return pulumi.Output.secret(value)


# ---- issue 11: API replicas, the edge proxy and the Docker hosts ---------------------------------------------
# One self-contained block (keys, settings object, reader), so it can move as a unit when the settings are ported.

MAX_API_REPLICAS = 8
DOCKER_HOST_FORMS = "ssh://[user@]host[:port], tcp://host:port (TLS) or unix:///path/to/docker.sock"
_DOCKER_HOST = re.compile(
    r"ssh://([a-zA-Z0-9._-]+@)?[a-zA-Z0-9.-]+(:\d{1,5})?"
    r"|tcp://[a-zA-Z0-9.-]+:\d{1,5}"
    r"|unix:///[a-zA-Z0-9._/-]+"
)

EDGE_KEYS: dict[str, ConfigKey] = {
    "apiReplicas": ConfigKey("integer", 1, f"API containers per Docker host behind the edge proxy (1-{MAX_API_REPLICAS}; limits are per replica)"),
    "proxyImage": ConfigKey("string", "haproxy:3.2", "Image of the edge proxy (HAProxy; the official image, or a local build of the same program)"),
    "proxyPullImage": ConfigKey("boolean", True, "Pull proxyImage (false: use a locally built image as is)"),
    "proxyContainerName": ConfigKey("string", "novita-gpu-api-proxy", "Name of the edge proxy container on each Docker host"),
    "proxyMemoryMb": ConfigKey("integer", 128, "Memory limit of the edge proxy in MB (>= 32); swap is disabled"),
    "proxyCpus": ConfigKey("string", "0.5", "CPU limit of the edge proxy (e.g. 0.5)"),
    "dockerHosts": ConfigKey("array", [], f"Docker engines to deploy to, rolled one after another; empty = the local engine. Each: {DOCKER_HOST_FORMS}"),
    "dockerTlsCa": ConfigKey("string", "", "CA certificate (PEM) of the tcp:// Docker hosts (secret)", secret=True),
    "dockerTlsCert": ConfigKey("string", "", "Client certificate (PEM) for the tcp:// Docker hosts (secret)", secret=True),
    "dockerTlsKey": ConfigKey("string", "", "Client key (PEM) for the tcp:// Docker hosts (secret)", secret=True),
}
KEYS.update(EDGE_KEYS)


@dataclass(frozen=True)
class DockerTlsSecrets:
    """Client TLS material for tcp:// Docker hosts, as secret Outputs."""

    ca: pulumi.Output[str]
    cert: pulumi.Output[str]
    key: pulumi.Output[str]


@dataclass(frozen=True)
class EdgeSettings:
    """Replicas per host, the edge proxy in front of them, and the Docker hosts they run on."""

    api_replicas: int
    proxy_image: str
    proxy_pull_image: bool
    proxy_container_name: str
    proxy_memory_mb: int
    proxy_cpus: str
    docker_hosts: tuple[str, ...]  # empty: the local engine through the default provider
    docker_tls: Optional[DockerTlsSecrets]

    @property
    def proxy_memory_swap_mb(self) -> int:
        """Equal to memory: no swap, and no drift against Docker's default of twice the memory."""
        return self.proxy_memory_mb


def _read_edge(read: "_Reader", network_mode: str, valkey_mode: str) -> EdgeSettings:
    replicas = read.integer("apiReplicas", minimum=1, maximum=MAX_API_REPLICAS)
    if network_mode == "host" and replicas != 1:
        raise StackConfigError("apiReplicas", "networkMode host runs exactly 1 replica (they would share one port)")
    hosts = read.string_list("dockerHosts")
    for index, host in enumerate(hosts):
        if not _DOCKER_HOST.fullmatch(host):
            raise StackConfigError("dockerHosts", f"item {index} {host!r} is not a Docker host URL; use {DOCKER_HOST_FORMS}")
    if len(set(hosts)) != len(hosts):
        raise StackConfigError("dockerHosts", "lists a host twice")
    if len(hosts) > 1 and network_mode == "host":
        raise StackConfigError("dockerHosts", "networkMode host supports one host only")
    if len(hosts) > 1 and valkey_mode == "local":
        raise StackConfigError(
            "dockerHosts", "more than one host needs valkeyMode aiven: the local Valkey is reachable from its own host only"
        )
    needs_tls = any(host.startswith("tcp://") for host in hosts)
    tls_values = [read.secret(key, required=needs_tls) for key in ("dockerTlsCa", "dockerTlsCert", "dockerTlsKey")]
    return EdgeSettings(
        api_replicas=replicas,
        proxy_image=read.text("proxyImage"),
        proxy_pull_image=read.boolean("proxyPullImage"),
        proxy_container_name=read.name("proxyContainerName"),
        proxy_memory_mb=read.integer("proxyMemoryMb", minimum=32, unit=" MB"),
        proxy_cpus=read.cpus("proxyCpus"),
        docker_hosts=tuple(hosts),
        docker_tls=DockerTlsSecrets(*tls_values) if needs_tls else None,
    )
