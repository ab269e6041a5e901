"""The program's settings: one frozen pydantic model per concern, composed by `StackSettings`.

How to add a setting or a concern (e.g. `proxy`):
1. Add the key to `keys.KEYS` and to `Pulumi.yaml` (same type, default, description; a test compares them).
2. Add a field to the concern's model: `name: <type from types.py> = setting("pulumiKey")`. Pass
   `env="VARIABLE"` when the API container receives it as an environment variable (the container contract,
   rendered by components/api_service.py; `secret_env=True` sends it as a secret). Defaults stay in `KEYS`.
3. A rule between fields of one concern is a `model_validator` on that concern that raises `RuleViolation(key, ...)`;
   a rule across concerns (production rules, valkey mode) sits on the model that holds both (`StackSettings`).
4. A new concern is a `Concern` subclass and one field of `StackSettings`; the loader (`load.py`) fills it.
Components take the concern models they use, never `StackSettings` itself.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from components.config import types as t
from components.config.keys import MAX_API_REPLICAS
from components.config.validators import parse_duration_ms

RESTART_POLICIES = ("no", "on-failure", "always", "unless-stopped")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
MIN_WEBHOOK_SECRET_LENGTH = 24
MIN_API_KEY_HASH_SECRET_LENGTH = 32  # as app/core/config.py requires


def setting(key: str, env: str | None = None, secret_env: bool = False) -> Any:
    """A field read from the stack key `key`; `env` names the API container variable it becomes, if any."""
    return Field(alias=key, json_schema_extra={"env": env, "secret_env": secret_env} if env else None)


def container_variables(model: type[BaseModel]) -> dict[str, tuple[str, bool]]:
    """`{field name: (environment variable, sent as a secret)}` for the fields of `model` that reach the container."""
    found = {}
    for name, field in model.model_fields.items():
        extra = field.json_schema_extra
        if isinstance(extra, dict) and extra.get("env"):
            found[name] = (str(extra["env"]), bool(extra["secret_env"]))
    return found


class RuleViolation(ValueError):
    """A rule between settings is broken; `key` is the Pulumi key to change."""

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        super().__init__(problem)


def missing_secret(key: str, why: str = "") -> RuleViolation:
    """The error for a required secret that is not set."""
    return RuleViolation(key, f"missing required secret{why}; set it with: pulumi config set --secret {key}")


class Concern(BaseModel):
    """Base of every settings model: immutable, only its own keys."""

    model_config = ConfigDict(frozen=True, extra="forbid")


# ---- the API process (its environment) ----------------------------------------------------------------------


class ServiceSettings(Concern):
    """The API's runtime settings and its own secrets, all passed as environment variables."""

    app_env: Annotated[str, t.one_of("development", "production")] = setting("appEnv", env="APP_ENV")
    log_level: Annotated[str, t.one_of(*LOG_LEVELS)] = setting("logLevel", env="LOG_LEVEL")
    novita_base_url: t.HttpUrl = setting("novitaBaseUrl", env="NOVITA_BASE_URL")
    fault_injection: t.Flag = setting("faultInjection", env="FAULT_INJECTION")
    docs_enabled: t.OptionalFlag = setting("docsEnabled", env="DOCS_ENABLED")
    max_request_body_bytes: t.Count = setting("maxRequestBodyBytes", env="MAX_REQUEST_BODY_BYTES")
    rate_limit_requests: t.CountOrZero = setting("rateLimitRequests", env="RATE_LIMIT_REQUESTS")
    rate_limit_window_seconds: Annotated[int, t.whole_number(1, 3600)] = setting(
        "rateLimitWindowSeconds", env="RATE_LIMIT_WINDOW_SECONDS"
    )
    cors_allow_origins: t.OriginList = setting("corsAllowOrigins", env="CORS_ALLOW_ORIGINS")
    novita_api_key: t.OptionalSecret = setting("novitaApiKey", env="NOVITA_API_KEY", secret_env=True)
    api_keys: t.OptionalSecret = setting("apiKeys", env="API_KEYS", secret_env=True)
    api_key_hash_secret: t.OptionalSecret = setting("apiKeyHashSecret", env="API_KEY_HASH_SECRET", secret_env=True)

    @property
    def is_production(self) -> bool:
        """Production rules (restart always, API keys, no fault injection, Aiven protection) apply."""
        return self.app_env == "production"

    @model_validator(mode="after")
    def _rules(self) -> ServiceSettings:
        if self.novita_api_key is None:
            raise missing_secret("novitaApiKey")
        if self.is_production and self.api_keys is None:
            raise missing_secret("apiKeys")
        if self.is_production and self.api_key_hash_secret is None:
            raise missing_secret("apiKeyHashSecret")
        if (
            self.api_key_hash_secret is not None
            and len(self.api_key_hash_secret.get_secret_value()) < MIN_API_KEY_HASH_SECRET_LENGTH
        ):
            raise RuleViolation(
                "apiKeyHashSecret", f"is too short; use at least {MIN_API_KEY_HASH_SECRET_LENGTH} characters"
            )
        if self.is_production and self.fault_injection:
            raise RuleViolation("faultInjection", "fault injection is refused when appEnv is production")
        return self


class JobSettings(Concern):
    """The API's durable job queue: the knobs that matter in production."""

    concurrency: t.Count = setting("jobConcurrency", env="JOB_CONCURRENCY")
    max_attempts: t.Count = setting("jobMaxAttempts", env="JOB_MAX_ATTEMPTS")
    visibility_timeout_seconds: t.Seconds = setting("jobVisibilityTimeoutSeconds", env="JOB_VISIBILITY_TIMEOUT_SECONDS")
    shutdown_grace_seconds: t.SecondsOrZero = setting("shutdownGraceSeconds", env="SHUTDOWN_GRACE_SECONDS")


class LifecycleSettings(Concern):
    """Lifecycle automation of Novita instances: placement, readiness, cost guards, budgets' defaults, spot recovery."""

    placement_region_order: t.ClusterIdList = setting("placementRegionOrder", env="PLACEMENT_REGION_ORDER")
    readiness_enabled: t.Flag = setting("readinessEnabled", env="READINESS_ENABLED")
    readiness_max_wait_seconds: t.Seconds = setting("readinessMaxWaitSeconds", env="READINESS_MAX_WAIT_SECONDS")
    provisioning_timeout_seconds: t.Seconds = setting(
        "provisioningTimeoutSeconds", env="INSTANCE_PROVISIONING_TIMEOUT_SECONDS"
    )
    auto_stop_enabled: t.Flag = setting("autoStopEnabled", env="AUTO_STOP_ENABLED")
    auto_stop_idle_seconds: t.Seconds = setting("autoStopIdleSeconds", env="AUTO_STOP_IDLE_SECONDS")
    auto_stop_startup_grace_seconds: t.SecondsOrZero = setting(
        "autoStopStartupGraceSeconds", env="AUTO_STOP_STARTUP_GRACE_SECONDS"
    )
    auto_stop_dry_run: t.Flag = setting("autoStopDryRun", env="AUTO_STOP_DRY_RUN")
    max_instance_lifetime_seconds: t.SecondsOrZero = setting(
        "maxInstanceLifetimeSeconds", env="MAX_INSTANCE_LIFETIME_SECONDS"
    )
    budget_default_max_gpus: t.OptionalWholeNumber = setting("budgetDefaultMaxGpus", env="BUDGET_DEFAULT_MAX_GPUS")
    budget_default_max_spend_per_day: t.OptionalUsd = setting(
        "budgetDefaultMaxSpendPerDay", env="BUDGET_DEFAULT_MAX_SPEND_PER_DAY"
    )
    budget_default_max_spend_per_month: t.OptionalUsd = setting(
        "budgetDefaultMaxSpendPerMonth", env="BUDGET_DEFAULT_MAX_SPEND_PER_MONTH"
    )
    budget_auto_stop: t.Flag = setting("budgetAutoStop", env="BUDGET_AUTO_STOP")
    budget_auto_stop_dry_run: t.Flag = setting("budgetAutoStopDryRun", env="BUDGET_AUTO_STOP_DRY_RUN")
    spot_recovery_enabled: t.Flag = setting("spotRecoveryEnabled", env="SPOT_RECOVERY_ENABLED")
    spot_recovery_min_interval_seconds: t.Seconds = setting(
        "spotRecoveryMinIntervalSeconds", env="SPOT_RECOVERY_MIN_INTERVAL_SECONDS"
    )


class WebhookSettings(Concern):
    """Signed webhooks of lifecycle events. The URL goes to the container as a secret: receivers' URLs carry tokens."""

    url: t.OptionalHttpUrl = setting("webhookUrl", env="WEBHOOK_URL", secret_env=True)
    secret: t.OptionalSecret = setting("webhookSecret", env="WEBHOOK_SECRET", secret_env=True)
    allow_private_targets: t.Flag = setting("webhookAllowPrivateTargets", env="WEBHOOK_ALLOW_PRIVATE_TARGETS")
    max_attempts: t.Count = setting("webhookMaxAttempts", env="WEBHOOK_MAX_ATTEMPTS")

    @model_validator(mode="after")
    def _signed(self) -> WebhookSettings:
        if self.url and self.secret is None:
            raise missing_secret("webhookSecret", " when webhookUrl is set (webhooks are always signed)")
        if self.secret is not None and len(self.secret.get_secret_value()) < MIN_WEBHOOK_SECRET_LENGTH:
            raise RuleViolation("webhookSecret", f"is too short; use at least {MIN_WEBHOOK_SECRET_LENGTH} characters")
        return self


# ---- the API container ---------------------------------------------------------------------------------------


class ContainerSettings(Concern):
    """The API container itself: name, network, restart policy, limits, stop and logs."""

    name: t.DockerName = setting("containerName")
    api_port: t.Port = setting("apiPort")
    api_host_address: t.IpAddress = setting("apiHostAddress")
    network_mode: Annotated[str, t.one_of("bridge", "host")] = setting("networkMode")
    network_name: t.DockerName = setting("networkName")
    restart_policy: Annotated[str, t.one_of(*RESTART_POLICIES)] = setting("restartPolicy")
    memory_mb: Annotated[int, t.whole_number(128, unit=" MB")] = setting("memoryMb")
    cpus: t.Cpus = setting("cpus")
    stop_grace_seconds: t.Count = setting("stopGraceSeconds")
    log_max_size: Annotated[str, t.matching(r"[1-9]\d*[kmg]", "a size such as 10m (k, m or g)")] = setting("logMaxSize")
    log_max_file: t.Count = setting("logMaxFile")
    replicas: Annotated[int, t.whole_number(1, MAX_API_REPLICAS)] = setting(
        "apiReplicas"
    )  # per Docker host; limits are per replica

    @model_validator(mode="after")
    def _one_replica_on_the_host_network(self) -> ContainerSettings:
        if self.uses_host_network and self.replicas != 1:
            raise RuleViolation("apiReplicas", "networkMode host runs exactly 1 replica (they would share one port)")
        return self

    @property
    def memory_swap_mb(self) -> int:
        """Equal to memory: no swap, and no drift against Docker's default of twice the memory."""
        return self.memory_mb

    @property
    def uses_host_network(self) -> bool:
        """Containers share the host's network (tests); nothing is published."""
        return self.network_mode == "host"


class HealthcheckSettings(Concern):
    """The API container's healthcheck, durations in Go's canonical form."""

    interval: t.GoDuration = setting("healthcheckInterval")
    timeout: t.GoDuration = setting("healthcheckTimeout")
    retries: t.Count = setting("healthcheckRetries")
    start_period: t.GoDurationOrZero = setting("healthcheckStartPeriod")
    start_interval: t.OptionalGoDuration = setting("healthcheckStartInterval")  # off unless set: Engine < 25 refuses it

    tests: ClassVar[tuple[str, ...]] = ("CMD", "python", "-m", "app.healthcheck")

    @model_validator(mode="after")
    def _timeout_within_interval(self) -> HealthcheckSettings:
        if self.timeout_ms >= self.interval_ms:
            raise RuleViolation(
                "healthcheckTimeout", f"must be shorter than healthcheckInterval ({self.timeout} >= {self.interval})"
            )
        return self

    @property
    def interval_ms(self) -> int:
        return parse_duration_ms(self.interval)

    @property
    def timeout_ms(self) -> int:
        return parse_duration_ms(self.timeout)

    @property
    def start_period_ms(self) -> int:
        return parse_duration_ms(self.start_period)

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


class HardeningSettings(Concern):
    """Container hardening of the API (issue 6 item 3)."""

    enabled: t.Flag = setting("containerHardening")
    user: Annotated[str, t.matching(r"[1-9]\d*(:\d+)?", "a non-root numeric uid[:gid] such as 10001:10001")] = setting(
        "containerUser"
    )
    tmpfs_size_mb: Annotated[int, t.whole_number(1, unit=" MB")] = setting("tmpfsSizeMb")
    pids_limit: Annotated[int, t.whole_number(16)] = setting("pidsLimit")


# ---- the edge proxy and the Docker hosts (issue 11) ------------------------------------------------------------


class ProxySettings(Concern):
    """The edge proxy container in front of the replicas, one per Docker host."""

    image: t.Text = setting("proxyImage")
    pull_image: t.Flag = setting("proxyPullImage")
    container_name: t.DockerName = setting("proxyContainerName")
    memory_mb: Annotated[int, t.whole_number(32, unit=" MB")] = setting("proxyMemoryMb")
    cpus: t.Cpus = setting("proxyCpus")

    @property
    def memory_swap_mb(self) -> int:
        """Equal to memory: no swap, and no drift against Docker's default of twice the memory."""
        return self.memory_mb


class TlsSettings(Concern):
    """HTTPS for a domain: a Caddy container in front of the edge proxy on each host (none without a domain)."""

    domain: t.OptionalDomain = setting("domain")
    acme_email: t.OptionalEmail = setting("acmeEmail")
    image: t.Text = setting("tlsImage")
    pull_image: t.Flag = setting("tlsPullImage")
    container_name: t.DockerName = setting("tlsContainerName")
    https_port: t.Port = setting("httpsPort")
    http_port: t.Port = setting("httpPort")
    public_address: t.IpAddress = setting("publicAddress")

    @model_validator(mode="after")
    def _two_ports(self) -> TlsSettings:
        if self.domain and self.https_port == self.http_port:
            raise RuleViolation("httpPort", f"must differ from httpsPort ({self.http_port})")
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.domain)

    @property
    def volume_name(self) -> str:
        """The named volume holding the certificates (and the internal CA), so a replaced container keeps them."""
        return f"{self.container_name}-data"

    @property
    def https_url(self) -> str:
        """The API's public HTTPS address ("" without a domain)."""
        if not self.domain:
            return ""
        return f"https://{self.domain}" + ("" if self.https_port == 443 else f":{self.https_port}")


class DockerHostSettings(Concern):
    """The Docker engines the replicas and proxies run on (empty: the local engine), and the TLS client material
    of the tcp:// ones."""

    urls: t.DockerHostList = setting("dockerHosts")
    tls_ca: t.OptionalSecret = setting("dockerTlsCa")
    tls_cert: t.OptionalSecret = setting("dockerTlsCert")
    tls_key: t.OptionalSecret = setting("dockerTlsKey")

    TLS_KEYS: ClassVar[tuple[str, ...]] = ("dockerTlsCa", "dockerTlsCert", "dockerTlsKey")

    @model_validator(mode="after")
    def _tcp_needs_tls(self) -> DockerHostSettings:
        if any(url.startswith("tcp://") for url in self.urls):
            for key, value in zip(self.TLS_KEYS, (self.tls_ca, self.tls_cert, self.tls_key), strict=True):
                if value is None:
                    raise missing_secret(key, " for the tcp:// dockerHosts")
        return self

    @staticmethod
    def uses_tls(url: str) -> bool:
        """tcp:// engines are reached with the TLS client material; ssh:// and unix:// need none."""
        return url.startswith("tcp://")


# ---- the image and Valkey ------------------------------------------------------------------------------------


class ImageSettings(Concern):
    """How the API image is built and where it goes."""

    name: t.Text = setting("imageName")
    base_image: t.Text = setting("baseImage")
    platform: Annotated[str, t.matching(r"[a-z0-9]+/[a-z0-9_]+(/[a-z0-9]+)?", "os/arch such as linux/amd64")] = setting(
        "imagePlatform"
    )
    push: t.Flag = setting("imagePush")
    registry_server: t.OptionalText = setting("registryServer")
    registry_username: t.OptionalText = setting("registryUsername")
    registry_password: t.OptionalSecret = setting("registryPassword")
    # A rollback: run this earlier build (a tag the program gave it) instead of building app/; empty = build.
    pinned: Annotated[
        str,
        t.matching(
            r"([a-z0-9][a-z0-9._/:@-]*)?", "an image tag from an earlier build such as novita-gpu-api:prod-3f9a1c2b7d10"
        ),
    ] = setting("apiImage")

    @model_validator(mode="after")
    def _push_target(self) -> ImageSettings:
        if self.push and not self.registry_server:
            raise RuleViolation("registryServer", "required when imagePush is true")
        if self.push and not self.name.startswith(f"{self.registry_server}/"):
            raise RuleViolation(
                "imageName", f"must start with '{self.registry_server}/' to be pushed to registryServer"
            )
        if self.push and self.registry_username and self.registry_password is None:
            raise missing_secret("registryPassword", " for registryUsername")
        return self


class LocalValkeySettings(Concern):
    """The dev Valkey container."""

    image: t.Text = setting("valkeyImage")
    pull_image: t.Flag = setting("valkeyPullImage")
    port: t.Port = setting("valkeyPort")
    container_name: t.DockerName = setting("valkeyContainerName")
    server_binary: t.Executable = setting("valkeyServerBinary")
    cli_binary: t.Executable = setting("valkeyCliBinary")

    @property
    def volume_name(self) -> str:
        """The named volume holding the Valkey data."""
        return f"{self.container_name}-data"


class AivenValkeySettings(Concern):
    """The managed Aiven for Valkey service."""

    project: t.OptionalText = setting("aivenProject")
    cloud: t.Text = setting("aivenCloud")
    plan: Annotated[str, t.matching(r"[a-z0-9-]+", "a lowercase plan such as startup-4")] = setting("aivenPlan")
    service_name: Annotated[str, t.matching(r"[a-z][a-z0-9-]{0,62}", "lowercase letters, digits and dashes")] = setting(
        "aivenServiceName"
    )
    maintenance_dow: Annotated[str, t.one_of(*WEEKDAYS)] = setting("aivenMaintenanceDow")
    maintenance_time: Annotated[str, t.matching(r"([01]\d|2[0-3]):[0-5]\d:[0-5]\d", "UTC HH:MM:SS")] = setting(
        "aivenMaintenanceTime"
    )
    ip_allow_list: t.CidrList = setting("valkeyIpAllowList")
    allow_any_ip: t.Flag = setting("valkeyAllowAnyIp")
    # Empty: the API connects as Aiven's default (admin) user.
    app_user: Annotated[str, t.matching(r"([a-zA-Z0-9_-]{1,64})?", "1-64 letters, digits, _ or -")] = setting(
        "valkeyAppUser"
    )
    token: t.OptionalSecret = setting("aivenToken")

    @model_validator(mode="after")
    def _not_the_admin(self) -> AivenValkeySettings:
        if self.app_user == "default":
            raise RuleViolation("valkeyAppUser", "'default' is Aiven's admin user; name a new user, or leave it empty")
        return self

    @property
    def opens_to_everyone(self) -> bool:
        """The allow-list contains 0.0.0.0/0 or ::/0."""
        return any(ipaddress.ip_network(cidr).prefixlen == 0 for cidr in self.ip_allow_list)


class ValkeySettings(Concern):
    """Which Valkey the API uses: a local container (dev) or Aiven for Valkey (prod)."""

    mode: Annotated[str, t.one_of("local", "aiven")] = setting("valkeyMode")
    local: LocalValkeySettings
    aiven: AivenValkeySettings

    @model_validator(mode="after")
    def _mode_needs(self) -> ValkeySettings:
        if self.mode != "aiven":
            if self.aiven.app_user:
                raise RuleViolation(
                    "valkeyAppUser", "applies only with valkeyMode aiven (the local Valkey has no users)"
                )
            return self
        if not self.aiven.ip_allow_list:
            raise RuleViolation(
                "valkeyIpAllowList", "aiven mode needs at least one CIDR (Aiven's default is the whole internet)"
            )
        if not self.aiven.project:
            raise RuleViolation("aivenProject", "must not be empty")
        if self.aiven.token is None:
            raise missing_secret("aivenToken")
        return self

    @property
    def target(self) -> LocalValkeySettings | AivenValkeySettings:
        """The settings of the Valkey in use."""
        return self.aiven if self.mode == "aiven" else self.local


# ---- the whole stack -----------------------------------------------------------------------------------------


class StackSettings(Concern):
    """Everything the program needs, validated and canonical. Build it with `components.config.load_settings()`."""

    service: ServiceSettings
    jobs: JobSettings
    lifecycle: LifecycleSettings
    webhooks: WebhookSettings
    container: ContainerSettings
    healthcheck: HealthcheckSettings
    hardening: HardeningSettings
    image: ImageSettings
    valkey: ValkeySettings
    proxy: ProxySettings
    tls: TlsSettings
    hosts: DockerHostSettings

    @property
    def is_production(self) -> bool:
        return self.service.is_production

    @model_validator(mode="after")
    def _production_rules(self) -> StackSettings:
        restart = self.container.restart_policy
        if self.is_production and restart != "always":
            raise RuleViolation("restartPolicy", f"production requires 'always' (got {restart!r})")
        aiven = self.valkey.aiven
        if self.is_production and self.valkey.mode == "aiven" and aiven.opens_to_everyone and not aiven.allow_any_ip:
            raise RuleViolation(
                "valkeyIpAllowList", "0.0.0.0/0 is refused in production unless valkeyAllowAnyIp is true"
            )
        return self

    @model_validator(mode="after")
    def _jobs_finish_before_docker_kills(self) -> StackSettings:
        if self.jobs.shutdown_grace_seconds >= self.container.stop_grace_seconds:
            raise RuleViolation(
                "shutdownGraceSeconds",
                f"must be shorter than stopGraceSeconds ({self.jobs.shutdown_grace_seconds} >= "
                f"{self.container.stop_grace_seconds}), or Docker kills the API before its jobs are handed back",
            )
        return self

    @model_validator(mode="after")
    def _hosts_reach_everything(self) -> StackSettings:
        if len(self.hosts.urls) > 1 and self.container.uses_host_network:
            raise RuleViolation("dockerHosts", "networkMode host supports one host only")
        if len(self.hosts.urls) > 1 and self.valkey.mode == "local":
            raise RuleViolation(
                "dockerHosts",
                "more than one host needs valkeyMode aiven: the local Valkey is reachable from its own host only",
            )
        return self

    @model_validator(mode="after")
    def _domain_needs(self) -> StackSettings:
        if not self.tls.enabled:
            return self
        if self.container.uses_host_network:
            raise RuleViolation(
                "domain", "needs networkMode bridge (the HTTPS front reaches the edge proxy over the private network)"
            )
        if self.is_production and not self.tls.acme_email:
            raise RuleViolation(
                "acmeEmail", "required with domain in production (the ACME account's contact for its certificates)"
            )
        return self
