"""The table of every stack config key (type, default, description), and the error bad config raises.

`Pulumi.yaml`'s `config:` block declares the same keys with the same types and defaults (tests/infra/test_settings.py
keeps the two equal), and each key is read by exactly one field of `models.py` (a test checks that too). Defaults live
here only: the loader hands a model the default of every key the stack does not set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pulumi

PROJECT = "novita-gpu-api"

# Bounds and wording shared by the key table and the validators of the replicas and Docker hosts.
MAX_API_REPLICAS = 8
DOCKER_HOST_FORMS = "ssh://[user@]host[:port], tcp://host:port (TLS) or unix:///path/to/docker.sock"

ConfigType = Literal["string", "integer", "boolean", "array"]
ConfigValue = str | int | bool | list[str]


@dataclass(frozen=True)
class ConfigKey:
    """One stack config key. `default=None` means required; `Pulumi.yaml` declares the same (a test checks)."""

    type: ConfigType
    default: ConfigValue | None
    description: str
    secret: bool = False


# Pulumi.yaml's `config:` block must match this table (tests/infra/test_settings.py checks).
# Optional secrets carry an empty default and no `secret: true` in Pulumi.yaml, because the CLI refuses a
# plain default on a secret key; the loader refuses them unless set with `pulumi config set --secret`.
KEYS: dict[str, ConfigKey] = {
    "appEnv": ConfigKey(
        "string", "development", "APP_ENV of the API: development or production (production rules apply)"
    ),
    "logLevel": ConfigKey("string", "INFO", "LOG_LEVEL of the API: DEBUG, INFO, WARNING or ERROR"),
    "novitaBaseUrl": ConfigKey("string", "https://api.novita.ai/gpu-instance/openapi/v1", "Novita v1 base URL"),
    "faultInjection": ConfigKey("boolean", False, "Enable the API's /debug fault endpoints (refused in production)"),
    "containerName": ConfigKey(
        "string",
        "novita-gpu-instance-api",
        "Name prefix of the API replicas (<name>-<i>-<suffix>); the exact container name with networkMode host",
    ),
    "apiPort": ConfigKey("integer", 3003, "Host port of the API (1-65535)"),
    "apiHostAddress": ConfigKey(
        "string",
        "127.0.0.1",
        "Address the API is reachable at: the published port's IP (bridge) or the listen address (host)",
    ),
    "networkMode": ConfigKey(
        "string",
        "bridge",
        "bridge: a private Docker network for the API and local Valkey; host: the host's network (tests)",
    ),
    "networkName": ConfigKey("string", "novita-gpu-api", "Name of the private Docker network (bridge mode)"),
    "restartPolicy": ConfigKey(
        "string",
        "unless-stopped",
        "Docker restart policy: no, on-failure, always or unless-stopped (production: always)",
    ),
    "healthcheckInterval": ConfigKey("string", "30s", "Container healthcheck interval (Go duration)"),
    "healthcheckTimeout": ConfigKey("string", "10s", "Container healthcheck timeout, shorter than the interval"),
    "healthcheckRetries": ConfigKey(
        "integer", 5, "Consecutive failures before unhealthy (>= 1); also HEALTHCHECK_KILL_AFTER"
    ),
    "healthcheckStartPeriod": ConfigKey("string", "60s", "Grace period after start before failures count"),
    "healthcheckStartInterval": ConfigKey(
        "string", "", "Probe interval during the start period; empty = off (needs Docker Engine 25+)"
    ),
    "memoryMb": ConfigKey("integer", 512, "Memory limit of the API container in MB (>= 128); swap is disabled"),
    "cpus": ConfigKey("string", "0.5", "CPU limit of the API container (e.g. 0.5)"),
    "stopGraceSeconds": ConfigKey("integer", 30, "Seconds between SIGTERM and SIGKILL on stop, for in-flight work"),
    "logMaxSize": ConfigKey("string", "10m", "json-file log rotation: size of one file"),
    "logMaxFile": ConfigKey("integer", 3, "json-file log rotation: number of files kept"),
    "containerHardening": ConfigKey(
        "boolean",
        True,
        "Read-only rootfs, tmpfs /tmp, no-new-privileges, no capabilities, non-root user, process limit",
    ),
    "containerUser": ConfigKey("string", "10001:10001", "uid:gid the API runs as when hardening is on"),
    "tmpfsSizeMb": ConfigKey("integer", 64, "Size of the /tmp tmpfs in MB when hardening is on"),
    "pidsLimit": ConfigKey("integer", 256, "Process/thread limit of the API user (ulimit nproc) when hardening is on"),
    "imageName": ConfigKey("string", "novita-gpu-api:latest", "Name:tag of the API image built from app/"),
    "baseImage": ConfigKey(
        "string", "python:3.11-slim", "BASE_IMAGE build arg of app/Dockerfile (a mirror or a local image)"
    ),
    "imagePlatform": ConfigKey("string", "linux/amd64", "Platform the API image is built for"),
    "imagePush": ConfigKey("boolean", False, "Push the API image to registryServer (imageName must start with it)"),
    "registryServer": ConfigKey("string", "", "Registry host for imagePush"),
    "registryUsername": ConfigKey("string", "", "Registry user for imagePush"),
    "apiImage": ConfigKey(
        "string",
        "",
        "Rollback: run this earlier build (its tag, e.g. novita-gpu-api:prod-3f9a1c2b7d10) instead of building app/; empty = build (scripts/rollback.py sets it)",
    ),
    "registryPassword": ConfigKey("string", "", "Registry password for imagePush (secret)", secret=True),
    "valkeyMode": ConfigKey("string", "local", "local: a Valkey container; aiven: Aiven for Valkey"),
    "valkeyImage": ConfigKey("string", "valkey/valkey:8-alpine", "Image of the local Valkey"),
    "valkeyPullImage": ConfigKey("boolean", True, "Pull valkeyImage (false: use a locally built image as is)"),
    "valkeyPort": ConfigKey("integer", 6379, "Port of the local Valkey (1-65535)"),
    "valkeyContainerName": ConfigKey(
        "string", "novita-gpu-api-valkey", "Name of the local Valkey container; its volume is <name>-data"
    ),
    "valkeyServerBinary": ConfigKey(
        "string", "valkey-server", "Server binary of the local Valkey image (redis-server for a Redis image)"
    ),
    "valkeyCliBinary": ConfigKey(
        "string", "valkey-cli", "CLI used by the local Valkey healthcheck (redis-cli for a Redis image)"
    ),
    "aivenProject": ConfigKey("string", "", "Aiven project (required in aiven mode)"),
    "aivenCloud": ConfigKey("string", "google-europe-west1", "Aiven cloud/region"),
    "aivenPlan": ConfigKey("string", "startup-4", "Aiven for Valkey plan"),
    "aivenServiceName": ConfigKey("string", "novita-gpu-api-valkey", "Aiven service name"),
    "aivenMaintenanceDow": ConfigKey("string", "sunday", "Aiven maintenance window day (monday-sunday)"),
    "aivenMaintenanceTime": ConfigKey("string", "03:00:00", "Aiven maintenance window start, UTC HH:MM:SS"),
    "valkeyIpAllowList": ConfigKey("array", [], "CIDRs allowed to reach Aiven Valkey (required in aiven mode)"),
    "valkeyAllowAnyIp": ConfigKey("boolean", False, "Force-allow 0.0.0.0/0 on Aiven in production"),
    "valkeyAppUser": ConfigKey(
        "string",
        "",
        "Aiven mode: a least-privilege Valkey ACL user the API connects as (ngpu:* keys, the commands it uses; password generated by Aiven); empty = the default admin user",
    ),
    # The API's runtime, beyond the basics above (app/core/config.py reads each as the env var in the model).
    "docsEnabled": ConfigKey(
        "string",
        "",
        "DOCS_ENABLED: serve /docs and /redoc; empty = on in development, off in production; true or false forces it",
    ),
    "maxRequestBodyBytes": ConfigKey("integer", 1048576, "MAX_REQUEST_BODY_BYTES: larger request bodies get a 413"),
    "rateLimitRequests": ConfigKey(
        "integer", 600, "RATE_LIMIT_REQUESTS: requests per client key name per window, shared by replicas (0 = off)"
    ),
    "rateLimitWindowSeconds": ConfigKey("integer", 60, "RATE_LIMIT_WINDOW_SECONDS: the rate limit's window (1-3600)"),
    "corsAllowOrigins": ConfigKey(
        "array",
        [],
        "CORS_ALLOW_ORIGINS: browser origins allowed by CORS, e.g. https://app.example.com; empty = no CORS",
    ),
    "jobConcurrency": ConfigKey("integer", 8, "JOB_CONCURRENCY: jobs one API container runs at once"),
    "jobMaxAttempts": ConfigKey("integer", 5, "JOB_MAX_ATTEMPTS: attempts of a job before it becomes a dead letter"),
    "jobVisibilityTimeoutSeconds": ConfigKey(
        "integer", 20, "JOB_VISIBILITY_TIMEOUT_SECONDS: a crashed container's jobs are taken over after this long"
    ),
    "shutdownGraceSeconds": ConfigKey(
        "integer",
        10,
        "SHUTDOWN_GRACE_SECONDS: on stop, how long running jobs get to finish (shorter than stopGraceSeconds)",
    ),
    "placementRegionOrder": ConfigKey(
        "array", [], "PLACEMENT_REGION_ORDER: Novita cluster ids tried first, in order, e.g. us-ca-6"
    ),
    "readinessEnabled": ConfigKey(
        "boolean", True, "READINESS_ENABLED: probe an instance's ports after it runs and set readyAt"
    ),
    "readinessMaxWaitSeconds": ConfigKey(
        "integer", 600, "READINESS_MAX_WAIT_SECONDS: the readiness probe gives up after this long"
    ),
    "provisioningTimeoutSeconds": ConfigKey(
        "integer", 1800, "INSTANCE_PROVISIONING_TIMEOUT_SECONDS: an instance still provisioning this long is deleted"
    ),
    "autoStopEnabled": ConfigKey("boolean", True, "AUTO_STOP_ENABLED: stop running instances that get no heartbeat"),
    "autoStopIdleSeconds": ConfigKey(
        "integer", 1800, "AUTO_STOP_IDLE_SECONDS: idle limit (no heartbeat) before an instance is stopped"
    ),
    "autoStopStartupGraceSeconds": ConfigKey(
        "integer", 2700, "AUTO_STOP_STARTUP_GRACE_SECONDS: never auto-stopped this soon after it started running"
    ),
    "autoStopDryRun": ConfigKey("boolean", False, "AUTO_STOP_DRY_RUN: the cost guards only log what they would do"),
    "budgetDefaultMaxGpus": ConfigKey(
        "string",
        "",
        "BUDGET_DEFAULT_MAX_GPUS: GPUs a team may hold at once unless an admin set its own (empty = no limit)",
    ),
    "budgetDefaultMaxSpendPerDay": ConfigKey(
        "string", "", "BUDGET_DEFAULT_MAX_SPEND_PER_DAY: USD a team may spend per UTC day by default (empty = no limit)"
    ),
    "budgetDefaultMaxSpendPerMonth": ConfigKey(
        "string",
        "",
        "BUDGET_DEFAULT_MAX_SPEND_PER_MONTH: USD a team may spend per UTC month by default (empty = no limit)",
    ),
    "budgetAutoStop": ConfigKey(
        "boolean", False, "BUDGET_AUTO_STOP: stop a team's instances when it reaches 100 % of a spend budget"
    ),
    "budgetAutoStopDryRun": ConfigKey(
        "boolean", False, "BUDGET_AUTO_STOP_DRY_RUN: the budget guard only logs the instances it would stop"
    ),
    "maxInstanceLifetimeSeconds": ConfigKey(
        "integer", 0, "MAX_INSTANCE_LIFETIME_SECONDS: instances older than this are stopped (0 = no limit)"
    ),
    "spotRecoveryEnabled": ConfigKey(
        "boolean", False, "SPOT_RECOVERY_ENABLED: migrate a reclaimed spot instance to other hardware"
    ),
    "spotRecoveryMinIntervalSeconds": ConfigKey(
        "integer", 14400, "SPOT_RECOVERY_MIN_INTERVAL_SECONDS: at most one migration per instance per this long"
    ),
    "webhookUrl": ConfigKey(
        "string",
        "",
        "WEBHOOK_URL: where lifecycle events are POSTed, signed (empty = no webhooks); passed to the container as a secret",
    ),
    "webhookAllowPrivateTargets": ConfigKey(
        "boolean",
        False,
        "WEBHOOK_ALLOW_PRIVATE_TARGETS: allow a webhook URL on a private or loopback address in production",
    ),
    "webhookMaxAttempts": ConfigKey("integer", 8, "WEBHOOK_MAX_ATTEMPTS: delivery attempts of one event"),
    # Issue 11: replicas behind the edge proxy, on one or more Docker hosts.
    "apiReplicas": ConfigKey(
        "integer",
        1,
        f"API containers per Docker host behind the edge proxy (1-{MAX_API_REPLICAS}; limits are per replica)",
    ),
    "proxyImage": ConfigKey(
        "string",
        "haproxy:3.2",
        "Image of the edge proxy (HAProxy; the official image, or a local build of the same program)",
    ),
    "proxyPullImage": ConfigKey("boolean", True, "Pull proxyImage (false: use a locally built image as is)"),
    "proxyContainerName": ConfigKey(
        "string", "novita-gpu-api-proxy", "Name of the edge proxy container on each Docker host"
    ),
    "proxyMemoryMb": ConfigKey(
        "integer",
        128,
        "Memory limit of the edge proxy, and of the HTTPS front with a domain, in MB (>= 32); swap is disabled",
    ),
    "proxyCpus": ConfigKey(
        "string", "0.5", "CPU limit of the edge proxy, and of the HTTPS front with a domain (e.g. 0.5)"
    ),
    "dockerHosts": ConfigKey(
        "array",
        [],
        f"Docker engines to deploy to, rolled one after another; empty = the local engine. Each: {DOCKER_HOST_FORMS}",
    ),
    # Issue 11 item 1: HTTPS for a domain, in front of the edge proxy.
    "domain": ConfigKey(
        "string",
        "",
        "Public DNS name of the API: when set, an HTTPS front (Caddy) serves it with automatic certificates (ACME in production, an internal CA in development) and redirects HTTP to HTTPS; empty = none",
    ),
    "acmeEmail": ConfigKey(
        "string", "", "Contact email of the ACME account (Let's Encrypt); required with domain in production"
    ),
    "tlsImage": ConfigKey(
        "string",
        "caddy:2",
        "Image of the HTTPS front (Caddy; the official image, or a local build of the same program)",
    ),
    "tlsPullImage": ConfigKey("boolean", True, "Pull tlsImage (false: use a locally built image as is)"),
    "tlsContainerName": ConfigKey(
        "string",
        "novita-gpu-api-tls",
        "Name of the HTTPS front container on each Docker host; its certificates volume is <name>-data",
    ),
    "httpsPort": ConfigKey("integer", 443, "Host port of HTTPS for the domain (1-65535)"),
    "httpPort": ConfigKey(
        "integer", 80, "Host port of HTTP for the domain: redirects to HTTPS and answers ACME HTTP challenges (1-65535)"
    ),
    "publicAddress": ConfigKey("string", "0.0.0.0", "Address httpsPort and httpPort are published on"),
    "novitaApiKey": ConfigKey("string", None, "Novita API key (secret)", secret=True),
    "apiKeys": ConfigKey(
        "string", "", "Client API keys name:key,name:key (secret; required in production)", secret=True
    ),
    "apiKeyHashSecret": ConfigKey(
        "string",
        "",
        "API_KEY_HASH_SECRET: HMAC key the API stores client keys under (secret; required in production, at least "
        "32 characters)",
        secret=True,
    ),
    "aivenToken": ConfigKey("string", "", "Aiven API token (secret; required in aiven mode)", secret=True),
    "dockerTlsCa": ConfigKey("string", "", "CA certificate (PEM) of the tcp:// Docker hosts (secret)", secret=True),
    "dockerTlsCert": ConfigKey(
        "string", "", "Client certificate (PEM) for the tcp:// Docker hosts (secret)", secret=True
    ),
    "dockerTlsKey": ConfigKey("string", "", "Client key (PEM) for the tcp:// Docker hosts (secret)", secret=True),
    "webhookSecret": ConfigKey(
        "string",
        "",
        "WEBHOOK_SECRET: signing secret of the webhooks (secret; required with webhookUrl, at least 24 characters)",
        secret=True,
    ),
}


class StackConfigError(pulumi.RunError):
    """Bad stack config. A RunError, so the CLI prints the message without a stack trace."""

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        super().__init__(f"invalid stack config {PROJECT}:{key}: {problem}")
