"""Every setting of the service, read from the environment in this one place (docs/architecture.md).

`load_settings()` turns any missing or malformed variable into one `ConfigError` whose message names the variable
and never repeats its value, so a start-up failure is readable in `docker logs` without leaking a secret.
"""

from __future__ import annotations

import base64
import binascii
import re
from decimal import Decimal
from functools import cached_property
from pathlib import Path
from typing import Literal
from urllib.parse import quote, urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_NOVITA_BASE_URL = "https://api.novita.ai/gpu-instance/openapi/v1"
# Aiven shows `valkeys://` (TLS) or `valkey://`; redis-py only understands the redis schemes.
_REDIS_SCHEME_REWRITES = {"redis": "redis", "rediss": "rediss", "valkey": "redis", "valkeys": "rediss"}
_API_KEY_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MIN_API_KEY_LENGTH = 16
MIN_API_KEY_HASH_SECRET_LENGTH = 32
# Development only (production refuses to start without API_KEY_HASH_SECRET): a fixed, published value, so that every
# replica and every restart of a development deployment hashes keys alike without configuration (a random one per
# process would invalidate the keys on each restart and disagree between replicas). It protects nothing, and needs
# not to: development keys guard fake or test accounts.
DEVELOPMENT_API_KEY_HASH_SECRET = "development-only-api-key-hash-secret-not-for-production"
# Standard Webhooks' form of a signing secret: the prefix, then the key in base64.
WEBHOOK_SECRET_PREFIX = "whsec_"


class ConfigError(Exception):
    """The environment does not describe a runnable service; the message names each bad variable, no values."""


class Settings(BaseSettings):
    """Typed configuration of the API process; field `foo_bar` is read from the environment variable `FOO_BAR`."""

    model_config = SettingsConfigDict(extra="ignore", case_sensitive=False, validate_default=True)

    app_env: Literal["development", "production"] = "development"
    host: str = "0.0.0.0"
    port: int = Field(3003, ge=1, le=65535)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    pid_file: Path = Path("/tmp/app.pid")
    docs_enabled: bool | None = None  # default: on in development, off in production
    max_request_body_bytes: int = Field(1_048_576, gt=0)
    shutdown_grace_seconds: float = Field(10.0, ge=0)
    # After SIGTERM: seconds of answering /readyz 503 while still serving, before the listener closes, so a proxy
    # that routes on readiness stops sending here first (the Pulumi program sets it behind the edge proxy).
    shutdown_drain_seconds: float = Field(0.0, ge=0, le=60)

    # Valkey: either one URL, or the seed's host/port/password/tls quadruple.
    redis_url: SecretStr | None = None
    redis_host: str | None = None
    redis_port: int = Field(6379, ge=1, le=65535)
    redis_password: SecretStr | None = None
    redis_tls: bool = False
    redis_ca_cert: Path | None = None
    redis_connect_timeout_seconds: float = Field(5.0, gt=0)
    redis_socket_timeout_seconds: float = Field(10.0, gt=0)
    # Aiven closes connections idle for 300 s; checking well before that avoids using a dead socket.
    redis_health_check_interval_seconds: int = Field(30, gt=0, lt=300)
    redis_command_retries: int = Field(2, ge=0)
    redis_startup_retry_max_delay_seconds: float = Field(5.0, gt=0)
    redis_monitor_interval_seconds: float = Field(2.0, gt=0)

    # Novita client.
    novita_api_key: SecretStr
    novita_base_url: str = DEFAULT_NOVITA_BASE_URL
    novita_timeout_seconds: float = Field(15.0, gt=0)
    novita_max_attempts: int = Field(4, ge=1)
    # One budget for every replica, shared in Valkey (app/novita/ratebudget.py); the fallback is per replica.
    novita_rate_limit_per_second: float = Field(5.0, gt=0)
    novita_rate_limit_burst: int | None = Field(None, ge=3)  # default: the rate (at least 3)
    novita_rate_limit_fallback_per_second: float = Field(1.0, gt=0)
    novita_breaker_failure_threshold: int = Field(5, ge=1)
    novita_breaker_reset_seconds: float = Field(30.0, gt=0)
    novita_health_timeout_seconds: float = Field(2.0, gt=0)  # bounds the background check's call
    # One `GET /clusters` per interval across all replicas, shared through Valkey; what /health reports (app/health).
    novita_health_check_interval_seconds: float = Field(60.0, gt=0)

    # Clients of this API: `name:key,name:key`, the bootstrap admin keys; admins create the others through the API.
    api_keys: SecretStr | None = None
    # The HMAC key that API keys are stored under (app/access/keys.py): without it a copy of Valkey cannot test
    # guessed keys offline. Required in production; development falls back to `DEVELOPMENT_API_KEY_HASH_SECRET`.
    api_key_hash_secret: SecretStr | None = None
    # Per key name, shared by every replica through Valkey; 0 turns the limit off (app/core/ratelimit.py).
    rate_limit_requests: int = Field(600, ge=0)
    rate_limit_window_seconds: int = Field(60, ge=1, le=3600)
    # Browser origins allowed to call the API, comma-separated; empty (the default) serves no CORS headers at all.
    cors_allow_origins: str = ""
    # Dashboard (/ui) sign-in: how long a session lasts in Valkey before the key must be entered again.
    ui_session_ttl_seconds: int = Field(8 * 3600, ge=60, le=30 * 86400)
    fault_injection: bool = False

    # Job queue.
    job_max_attempts: int = Field(5, ge=1)
    job_visibility_timeout_seconds: float = Field(20.0, gt=0)  # the heartbeat keeps longer jobs claimed
    job_read_block_seconds: float = Field(2.0, gt=0)
    job_reclaim_interval_seconds: float = Field(5.0, gt=0)
    job_scheduler_interval_seconds: float = Field(0.5, gt=0)
    job_retry_base_seconds: float = Field(2.0, gt=0)
    job_retry_max_seconds: float = Field(300.0, gt=0)
    job_concurrency: int = Field(8, ge=1)
    job_retention_seconds: int = Field(7 * 86400, gt=0)

    # Cache and instance lifecycle (used by app/products and app/instances).
    cache_lock_seconds: float = Field(5.0, gt=0)
    cache_ttl_products_seconds: int = Field(60, gt=0)
    cache_ttl_clusters_seconds: int = Field(300, gt=0)
    cache_ttl_instances_seconds: int = Field(10, gt=0)
    instance_poll_interval_seconds: float = Field(5.0, gt=0)
    instance_provisioning_timeout_seconds: float = Field(1800.0, gt=0)
    idempotency_ttl_seconds: int = Field(86400, gt=0)

    # Lifecycle automation (app/lifecycle): webhooks, cost guards, reconciliation, spot recovery.
    webhook_url: str | None = None
    webhook_secret: SecretStr | None = None
    webhook_allow_private_targets: bool = False
    webhook_timeout_seconds: float = Field(10.0, gt=0)
    webhook_max_attempts: int = Field(8, ge=1)
    webhook_backoff_base_seconds: float = Field(5.0, gt=0)
    webhook_backoff_max_seconds: float = Field(600.0, gt=0)
    webhook_delivery_interval_seconds: float = Field(5.0, gt=0)
    auto_stop_enabled: bool = True
    auto_stop_idle_seconds: float = Field(1800.0, gt=0)
    auto_stop_startup_grace_seconds: float = Field(2700.0, ge=0)
    auto_stop_dry_run: bool = False
    max_instance_lifetime_seconds: float = Field(0.0, ge=0)  # 0: no maximum lifetime
    cost_guard_interval_seconds: float = Field(60.0, gt=0)
    cost_guard_action_lock_seconds: float = Field(300.0, gt=0)
    # Reconciliation is also the status sync every job waits on: one listing of Novita per period for all instances.
    reconcile_interval_seconds: float = Field(10.0, gt=0)
    reconcile_lease_seconds: float = Field(15.0, gt=0)  # kept alive while a pass runs
    reconcile_startup_timeout_seconds: float = Field(10.0, gt=0)
    reconcile_max_vanish_checks: int = Field(10, ge=1)  # direct lookups per pass to confirm a vanished instance
    spot_recovery_enabled: bool = False
    spot_recovery_min_interval_seconds: float = Field(14400.0, gt=0)
    spot_check_interval_seconds: float = Field(300.0, gt=0)
    lifecycle_tick_seconds: float = Field(1.0, gt=0)
    placement_region_order: str = ""  # cluster ids tried first, comma-separated, e.g. us-ca-6,as-sgp-2
    readiness_enabled: bool = True
    readiness_probe_timeout_seconds: float = Field(10.0, gt=0)
    readiness_retry_interval_seconds: float = Field(5.0, gt=0)
    readiness_max_wait_seconds: float = Field(600.0, gt=0)

    # Budgets (app/billing): the stack's defaults for teams without limits of their own (empty: no limit), and
    # the budget guard (alerts at 80 % and 100 % of a spend limit; the optional stop at 100 %).
    budget_default_max_gpus: int | None = Field(None, ge=0)
    budget_default_max_spend_per_day: Decimal | None = Field(None, ge=0, max_digits=15, decimal_places=6)
    budget_default_max_spend_per_month: Decimal | None = Field(None, ge=0, max_digits=15, decimal_places=6)
    budget_auto_stop: bool = False
    budget_auto_stop_dry_run: bool = False
    budget_check_interval_seconds: float = Field(60.0, gt=0)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("app_env", mode="before")
    @classmethod
    def _lower_app_env(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        parts = urlsplit(value.get_secret_value().strip())
        if parts.scheme not in _REDIS_SCHEME_REWRITES:
            raise ValueError("must start with redis://, rediss:// or valkeys://")
        if not parts.hostname:
            raise ValueError("has no host")
        return value

    @field_validator("redis_ca_cert")
    @classmethod
    def _check_ca_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError("is not a readable file")
        return value

    @field_validator("cors_allow_origins")
    @classmethod
    def _check_cors_origins(cls, value: str) -> str:
        for origin in _split_list(value):
            parts = urlsplit(origin)
            if origin != "*" and (parts.scheme not in ("http", "https") or not parts.hostname or parts.path):
                raise ValueError(f"'{origin}' is not an origin like https://app.example.com (or *)")
        return value

    @field_validator("novita_base_url")
    @classmethod
    def _check_novita_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http(s) URL")
        return value.rstrip("/")

    @field_validator("webhook_url")
    @classmethod
    def _check_webhook_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http(s) URL")
        return value.strip()

    @field_validator("webhook_secret")
    @classmethod
    def _check_webhook_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            _decode_webhook_secret(value.get_secret_value())
        return value

    @field_validator("novita_api_key")
    @classmethod
    def _check_novita_key(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("is empty")
        return value

    @field_validator("api_keys")
    @classmethod
    def _check_api_keys(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        _parse_api_keys(value.get_secret_value())
        return value

    @field_validator("api_key_hash_secret")
    @classmethod
    def _check_api_key_hash_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        if len(value.get_secret_value()) < MIN_API_KEY_HASH_SECRET_LENGTH:
            raise ValueError(f"must be at least {MIN_API_KEY_HASH_SECRET_LENGTH} characters")
        return value

    @model_validator(mode="after")
    def _check_combinations(self) -> Settings:
        if self.redis_url is None and not self.redis_host:
            raise ValueError("REDIS_URL: is required (or REDIS_HOST with REDIS_PORT/REDIS_PASSWORD/REDIS_TLS)")
        if self.app_env == "production" and self.api_keys is None:
            raise ValueError("API_KEYS: is required when APP_ENV=production")
        if self.app_env == "production" and self.api_key_hash_secret is None:
            raise ValueError("API_KEY_HASH_SECRET: is required when APP_ENV=production")
        if self.webhook_url is not None and (self.webhook_secret is None or not self.webhook_secret.get_secret_value()):
            raise ValueError("WEBHOOK_SECRET: is required when WEBHOOK_URL is set (webhooks are always signed)")
        if self.app_env == "production" and self.fault_injection:
            raise ValueError("FAULT_INJECTION: is refused when APP_ENV=production")
        return self

    @property
    def placement_regions(self) -> list[str]:
        """`PLACEMENT_REGION_ORDER` as a list of cluster ids."""
        return [cluster.strip() for cluster in self.placement_region_order.split(",") if cluster.strip()]

    @property
    def webhook_signing_key(self) -> bytes | None:
        """The HMAC key webhooks are signed with (a secret: never log it); None when no secret is set."""
        if self.webhook_secret is None or not self.webhook_secret.get_secret_value():
            return None
        return _decode_webhook_secret(self.webhook_secret.get_secret_value())

    @property
    def is_production(self) -> bool:
        """Whether the service runs with production safeguards (no live Novita call in /health, docs off)."""
        return self.app_env == "production"

    @property
    def openapi_docs_enabled(self) -> bool:
        """Whether /docs and /openapi.json are served."""
        return self.docs_enabled if self.docs_enabled is not None else not self.is_production

    @property
    def cors_origins(self) -> list[str]:
        """Origins allowed by CORS; empty means no CORS middleware."""
        return _split_list(self.cors_allow_origins)

    @property
    def redis_connection_url(self) -> str:
        """The URL redis-py can open (a secret: never log it)."""
        if self.redis_url is not None:
            url = self.redis_url.get_secret_value().strip()
            scheme, rest = url.split("://", 1)
            return f"{_REDIS_SCHEME_REWRITES[scheme]}://{rest}"
        scheme = "rediss" if self.redis_tls else "redis"
        auth = f":{quote(self.redis_password.get_secret_value(), safe='')}@" if self.redis_password else ""
        return f"{scheme}://{auth}{self.redis_host}:{self.redis_port}"

    @property
    def redis_uses_tls(self) -> bool:
        """Whether the Valkey connection is encrypted."""
        return self.redis_connection_url.startswith("rediss://")

    @cached_property
    def client_api_keys(self) -> dict[str, SecretStr]:
        """Client API keys by name; empty when none are configured (development only)."""
        if self.api_keys is None:
            return {}
        return _parse_api_keys(self.api_keys.get_secret_value())

    @property
    def api_key_hashing_key(self) -> bytes:
        """The HMAC key of stored API keys (a secret: never log it)."""
        secret = self.api_key_hash_secret
        return (secret.get_secret_value() if secret is not None else DEVELOPMENT_API_KEY_HASH_SECRET).encode()

    def secret_values(self) -> list[str]:
        """Every configured secret, for the log redaction filter."""
        secrets = [self.novita_api_key.get_secret_value(), self.redis_connection_url]
        if self.redis_password is not None:
            secrets.append(self.redis_password.get_secret_value())
        if self.redis_url is not None:
            secrets.append(self.redis_url.get_secret_value())
            password = urlsplit(self.redis_url.get_secret_value()).password
            if password:
                secrets.append(password)
        secrets.extend(key.get_secret_value() for key in self.client_api_keys.values())
        if self.api_key_hash_secret is not None:
            secrets.append(self.api_key_hash_secret.get_secret_value())
        if self.webhook_secret is not None:
            secrets.append(self.webhook_secret.get_secret_value())
        if self.webhook_url is not None:
            secrets.append(self.webhook_url)  # receiver URLs often carry a token
        return [secret for secret in secrets if secret]


def _split_list(raw: str) -> list[str]:
    """`a, b,,c` -> `["a", "b", "c"]`."""
    return [item.strip() for item in raw.split(",") if item.strip()]


def _decode_webhook_secret(secret: str) -> bytes:
    """The HMAC key of `WEBHOOK_SECRET`: a `whsec_<base64>` secret (Standard Webhooks) is base64-decoded; any other
    value is a plain secret whose UTF-8 bytes are the key, so a secret set before webhooks followed the standard
    keeps signing with the same key (its receivers pass it to their library as bytes)."""
    if not secret.startswith(WEBHOOK_SECRET_PREFIX):
        return secret.encode()
    encoded = secret.removeprefix(WEBHOOK_SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except binascii.Error:
        raise ValueError(f"after '{WEBHOOK_SECRET_PREFIX}' must come the key in base64") from None
    if not key:
        raise ValueError(f"has no key after '{WEBHOOK_SECRET_PREFIX}'")
    return key


def _parse_api_keys(raw: str) -> dict[str, SecretStr]:
    """Parse `name:key,name:key`; errors name the entry by position, never by its key."""
    keys: dict[str, SecretStr] = {}
    seen_values: set[str] = set()
    for position, entry in enumerate(raw.split(","), start=1):
        name, separator, key = entry.strip().partition(":")
        if not separator or not _API_KEY_NAME.match(name):
            raise ValueError(f"entry {position} must be name:key with a name of letters, digits, '_', '.', '-'")
        if len(key) < MIN_API_KEY_LENGTH:
            raise ValueError(f"key of '{name}' must be at least {MIN_API_KEY_LENGTH} characters")
        if name in keys or key in seen_values:
            raise ValueError(f"'{name}' is listed twice or shares its key with another name")
        keys[name] = SecretStr(key)
        seen_values.add(key)
    return keys


def load_settings() -> Settings:
    """Read the environment; raise `ConfigError` with one line naming every bad variable."""
    try:
        return Settings()  # values come from the environment
    except ValidationError as error:
        raise ConfigError(describe_validation_error(error)) from None


def describe_validation_error(error: ValidationError) -> str:
    """One line listing `VARIABLE: problem` for each error; pydantic's input values are deliberately left out."""
    problems = []
    for detail in error.errors(include_input=False, include_url=False):
        message = str(detail["msg"]).removeprefix("Value error, ")
        if detail["type"] == "missing":
            message = "is required"
        location = [str(part) for part in detail["loc"]]
        problems.append(f"{location[0].upper()}: {message}" if location else message)
    return "invalid configuration: " + "; ".join(problems)
