"""The container contract: every app setting is reachable from the stack or deliberately internal, the stack's
defaults are the app's, the app accepts what the program passes, and docs/architecture.md says the same as the code.

Tests may import `app.core.config` (the program itself never does).
"""

from __future__ import annotations

import re

import pulumi
import pytest
from pydantic import SecretStr

from app.core.config import Settings
from components.api_service import DERIVED_VARIABLES, RUNTIME_CONCERNS, container_contract
from components.config import KEYS
from components.config.models import container_variables
from tests.infra.harness import REPO_ROOT, ProgramRun
from tests.infra.test_api_service import api_container, env_map

# App settings the stack deliberately does not expose, and why. When app/core/config.py grows a setting, either give
# it a stack key (components/config/models.py, setting(..., env=...)) or list it here: the test below fails until then.
INTERNAL_APP_SETTINGS = {
    # Valkey: the program always passes REDIS_URL; these are the seed's alternative and the client's tuning.
    "REDIS_HOST": "REDIS_URL replaces it",
    "REDIS_PORT": "REDIS_URL replaces it",
    "REDIS_PASSWORD": "REDIS_URL replaces it",
    "REDIS_TLS": "REDIS_URL replaces it",
    "REDIS_CA_CERT": "Aiven's certificate chains to the image's system CAs",
    "REDIS_CONNECT_TIMEOUT_SECONDS": "client tuning",
    "REDIS_SOCKET_TIMEOUT_SECONDS": "client tuning",
    "REDIS_HEALTH_CHECK_INTERVAL_SECONDS": "tied to Aiven's 300 s idle timeout",
    "REDIS_COMMAND_RETRIES": "client tuning",
    "REDIS_STARTUP_RETRY_MAX_DELAY_SECONDS": "client tuning",
    "REDIS_MONITOR_INTERVAL_SECONDS": "client tuning",
    "PID_FILE": "shared by the app and its probe inside the image",
    # Novita client: tuned to Novita's API, not to a deployment.
    "NOVITA_TIMEOUT_SECONDS": "client tuning",
    "NOVITA_MAX_ATTEMPTS": "client tuning",
    "NOVITA_RATE_LIMIT_PER_SECOND": "client tuning",
    "NOVITA_BREAKER_FAILURE_THRESHOLD": "client tuning",
    "NOVITA_BREAKER_RESET_SECONDS": "client tuning",
    "NOVITA_HEALTH_TIMEOUT_SECONDS": "client tuning",
    "NOVITA_HEALTH_CHECK_INTERVAL_SECONDS": "health pacing: one shared key check per minute across replicas",
    "NOVITA_RATE_LIMIT_BURST": "client tuning",
    "NOVITA_RATE_LIMIT_FALLBACK_PER_SECOND": "client tuning",
    "RECONCILE_MAX_VANISH_CHECKS": "automation pacing",
    "UI_SESSION_TTL_SECONDS": "dashboard session lifetime (8 h), a product default like the idempotency window",
    # Queue internals: polling and retry pacing (the knobs that matter are stack keys: jobConcurrency, ...).
    "JOB_READ_BLOCK_SECONDS": "queue pacing",
    "JOB_RECLAIM_INTERVAL_SECONDS": "queue pacing",
    "JOB_SCHEDULER_INTERVAL_SECONDS": "queue pacing",
    "JOB_RETRY_BASE_SECONDS": "queue pacing",
    "JOB_RETRY_MAX_SECONDS": "queue pacing",
    "JOB_RETENTION_SECONDS": "queue housekeeping",
    "CACHE_LOCK_SECONDS": "cache internals",
    "CACHE_TTL_PRODUCTS_SECONDS": "cache internals",
    "CACHE_TTL_CLUSTERS_SECONDS": "cache internals",
    "CACHE_TTL_INSTANCES_SECONDS": "cache internals",
    "INSTANCE_POLL_INTERVAL_SECONDS": "polling pace",
    "IDEMPOTENCY_TTL_SECONDS": "API semantics, documented as 24 h",
    # Lifecycle automation pacing (what an operator decides is a stack key: limits, grace, dry run, enablement).
    "COST_GUARD_INTERVAL_SECONDS": "automation pacing",
    "COST_GUARD_ACTION_LOCK_SECONDS": "automation pacing",
    "RECONCILE_INTERVAL_SECONDS": "automation pacing",
    "RECONCILE_LEASE_SECONDS": "automation pacing",
    "RECONCILE_STARTUP_TIMEOUT_SECONDS": "automation pacing",
    "SPOT_CHECK_INTERVAL_SECONDS": "automation pacing",
    "LIFECYCLE_TICK_SECONDS": "automation pacing",
    "BUDGET_CHECK_INTERVAL_SECONDS": "automation pacing",
    "READINESS_PROBE_TIMEOUT_SECONDS": "automation pacing",
    "READINESS_RETRY_INTERVAL_SECONDS": "automation pacing",
    "WEBHOOK_TIMEOUT_SECONDS": "delivery pacing",
    "WEBHOOK_BACKOFF_BASE_SECONDS": "delivery pacing",
    "WEBHOOK_BACKOFF_MAX_SECONDS": "delivery pacing",
    "WEBHOOK_DELIVERY_INTERVAL_SECONDS": "delivery pacing",
}
APP_SETTINGS = {name.upper(): field for name, field in Settings.model_fields.items()}
PROBE_SOURCE = (REPO_ROOT / "app" / "healthcheck.py").read_text()
ARCHITECTURE = REPO_ROOT / "docs" / "architecture.md"


@pulumi.runtime.test
def test_every_app_setting_is_reachable_from_the_stack_or_listed_as_internal() -> None:
    contract = container_contract()
    unreachable = sorted(set(APP_SETTINGS) - set(contract) - set(INTERNAL_APP_SETTINGS))
    assert unreachable == [], f"app settings with neither a stack key nor an INTERNAL_APP_SETTINGS entry: {unreachable}"
    assert sorted(set(INTERNAL_APP_SETTINGS) - set(APP_SETTINGS)) == [], (
        "INTERNAL_APP_SETTINGS lists settings the app no longer has"
    )
    assert sorted(set(INTERNAL_APP_SETTINGS) & set(contract)) == [], "listed as internal, yet the stack passes it"


@pulumi.runtime.test
def test_every_variable_the_program_passes_is_read_by_the_app_or_its_probe() -> None:
    for variable in container_contract():
        assert variable in APP_SETTINGS or f'"{variable}"' in PROBE_SOURCE, f"{variable} is read by nothing in app/"


@pulumi.runtime.test
def test_secret_app_settings_travel_as_secrets() -> None:
    for variable, secret in container_contract().items():
        field = APP_SETTINGS.get(variable)
        if field is not None and SecretStr in getattr(field.annotation, "__args__", (field.annotation,)):
            assert secret, f"{variable} is a secret in the app but would be passed in clear"


def _env_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list):
        return ",".join(value)
    return "" if value is None else str(value)


@pulumi.runtime.test
def test_stack_defaults_are_the_app_defaults() -> None:
    for concern in RUNTIME_CONCERNS:
        for name, (variable, _) in container_variables(concern).items():
            field = APP_SETTINGS[variable]
            if field.is_required():
                continue
            key = concern.model_fields[name].alias
            assert key is not None, f"{concern.__name__}.{name} names no stack key"
            app_default = _env_text(field.default)
            assert _env_text(KEYS[key].default) == app_default, (
                f"{key} defaults to {KEYS[key].default!r}, the app's {variable} to {app_default!r}"
            )


# Every pass-through setting set away from its default: (stack key, stack value, variable, what the container gets).
PASS_THROUGH = [
    ("logLevel", "WARNING", "LOG_LEVEL", "WARNING"),
    ("docsEnabled", "true", "DOCS_ENABLED", "true"),
    ("maxRequestBodyBytes", "65536", "MAX_REQUEST_BODY_BYTES", "65536"),
    ("rateLimitRequests", "120", "RATE_LIMIT_REQUESTS", "120"),
    ("rateLimitWindowSeconds", "10", "RATE_LIMIT_WINDOW_SECONDS", "10"),
    (
        "corsAllowOrigins",
        '["https://app.example.com", "http://localhost:5173"]',
        "CORS_ALLOW_ORIGINS",
        "https://app.example.com,http://localhost:5173",
    ),
    ("jobConcurrency", "12", "JOB_CONCURRENCY", "12"),
    ("jobMaxAttempts", "3", "JOB_MAX_ATTEMPTS", "3"),
    ("jobVisibilityTimeoutSeconds", "45", "JOB_VISIBILITY_TIMEOUT_SECONDS", "45"),
    ("shutdownGraceSeconds", "25", "SHUTDOWN_GRACE_SECONDS", "25"),
    ("placementRegionOrder", '["us-ca-6", "as-sgp-2"]', "PLACEMENT_REGION_ORDER", "us-ca-6,as-sgp-2"),
    ("readinessEnabled", "false", "READINESS_ENABLED", "false"),
    ("readinessMaxWaitSeconds", "900", "READINESS_MAX_WAIT_SECONDS", "900"),
    ("provisioningTimeoutSeconds", "3600", "INSTANCE_PROVISIONING_TIMEOUT_SECONDS", "3600"),
    ("autoStopEnabled", "false", "AUTO_STOP_ENABLED", "false"),
    ("autoStopIdleSeconds", "900", "AUTO_STOP_IDLE_SECONDS", "900"),
    ("autoStopStartupGraceSeconds", "600", "AUTO_STOP_STARTUP_GRACE_SECONDS", "600"),
    ("autoStopDryRun", "true", "AUTO_STOP_DRY_RUN", "true"),
    ("maxInstanceLifetimeSeconds", "86400", "MAX_INSTANCE_LIFETIME_SECONDS", "86400"),
    ("budgetDefaultMaxGpus", "16", "BUDGET_DEFAULT_MAX_GPUS", "16"),
    ("budgetDefaultMaxSpendPerDay", "250.00", "BUDGET_DEFAULT_MAX_SPEND_PER_DAY", "250.00"),
    ("budgetDefaultMaxSpendPerMonth", "5000", "BUDGET_DEFAULT_MAX_SPEND_PER_MONTH", "5000"),
    ("budgetAutoStop", "true", "BUDGET_AUTO_STOP", "true"),
    ("budgetAutoStopDryRun", "true", "BUDGET_AUTO_STOP_DRY_RUN", "true"),
    ("spotRecoveryEnabled", "true", "SPOT_RECOVERY_ENABLED", "true"),
    ("spotRecoveryMinIntervalSeconds", "7200", "SPOT_RECOVERY_MIN_INTERVAL_SECONDS", "7200"),
    ("webhookAllowPrivateTargets", "true", "WEBHOOK_ALLOW_PRIVATE_TARGETS", "true"),
    ("webhookMaxAttempts", "4", "WEBHOOK_MAX_ATTEMPTS", "4"),
]
WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pulumi.runtime.test
def test_the_table_covers_every_pass_through_setting() -> None:
    passed = {variable for concern in RUNTIME_CONCERNS for variable, _ in container_variables(concern).values()}
    exercised = {row[2] for row in PASS_THROUGH} | {
        "APP_ENV",
        "NOVITA_BASE_URL",
        "FAULT_INJECTION",
        "NOVITA_API_KEY",
        "API_KEYS",
        "API_KEY_HASH_SECRET",
        "WEBHOOK_URL",
        "WEBHOOK_SECRET",
    }
    assert passed == exercised  # the last eight have their own tests (test_api_service.py, below)


@pytest.mark.parametrize("key, value, variable, expected", PASS_THROUGH, ids=[row[0] for row in PASS_THROUGH])
@pulumi.runtime.test
async def test_each_setting_reaches_the_container(key: str, value: str, variable: str, expected: str) -> None:
    before = env_map(api_container(await ProgramRun.for_stack("prod").run()))
    container = api_container(await ProgramRun.for_stack("prod", {key: value}).run())
    env = env_map(container)
    assert env[variable] == expected and before.get(variable) != expected
    assert {name for name in env if env[name] != before.get(name)} == {variable}  # nothing else moved
    assert not container.is_secret(f"envs[{list(env).index(variable)}]")


@pulumi.runtime.test
async def test_webhooks_reach_the_container_as_secrets() -> None:
    url = "https://hooks.example.com/novita?token=tok-3e1d"
    run = await ProgramRun.for_stack("prod", {"webhookUrl": url}, {"webhookSecret": WEBHOOK_SECRET}).run()
    container = api_container(run)
    env = env_map(container)
    assert (env["WEBHOOK_URL"], env["WEBHOOK_SECRET"]) == (url, WEBHOOK_SECRET)
    names = list(env)
    assert container.is_secret(f"envs[{names.index('WEBHOOK_URL')}]") and container.is_secret(
        f"envs[{names.index('WEBHOOK_SECRET')}]"
    )
    assert not any(url in str(output.value) or WEBHOOK_SECRET in str(output.value) for output in run.outputs.values())


@pulumi.runtime.test
async def test_without_a_webhook_url_no_webhook_variable_is_passed() -> None:
    env = env_map(api_container(await ProgramRun.for_stack("prod").run()))
    assert "WEBHOOK_URL" not in env and "WEBHOOK_SECRET" not in env
    assert "CORS_ALLOW_ORIGINS" not in env and "PLACEMENT_REGION_ORDER" not in env and "DOCS_ENABLED" not in env


@pulumi.runtime.test
async def test_the_app_accepts_everything_the_program_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    overrides = {key: value for key, value, _, _ in PASS_THROUGH}
    overrides["webhookUrl"] = "https://hooks.example.com/novita"
    env = env_map(api_container(await ProgramRun.for_stack("prod", overrides, {"webhookSecret": WEBHOOK_SECRET}).run()))
    for name in APP_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings()  # raises if the app refuses a value the program passes
    assert settings.is_production and settings.webhook_url == "https://hooks.example.com/novita"
    assert settings.placement_regions == ["us-ca-6", "as-sgp-2"]
    assert settings.cors_origins == ["https://app.example.com", "http://localhost:5173"]
    assert (settings.job_concurrency, settings.auto_stop_dry_run, settings.max_instance_lifetime_seconds) == (
        12,
        True,
        86400,
    )


def _contract_table() -> dict[str, tuple[bool, str]]:
    """docs/architecture.md's contract table: {variable: (secret, stack key cell)}."""
    text = ARCHITECTURE.read_text()
    section = text.split("## The container contract", 1)[1].split("\n#", 1)[0]
    rows: dict[str, tuple[bool, str]] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not line.startswith("|") or len(cells) < 3 or cells[0] in ("variable", "") or set(cells[0]) <= {"-"}:
            continue
        for variable in re.findall(r"`([A-Z][A-Z0-9_]*)`", cells[0]):
            rows[variable] = (cells[1] == "yes", cells[2])
    return rows


@pulumi.runtime.test
def test_the_documented_contract_is_the_code() -> None:
    documented = _contract_table()
    contract = container_contract()
    assert sorted(documented) == sorted(contract), (
        "docs/architecture.md's contract table lists other variables than components/api_service.py passes"
    )
    for variable, secret in contract.items():
        assert documented[variable][0] == secret, f"{variable}: the table's secret column is wrong"
    for concern in RUNTIME_CONCERNS:
        for name, (variable, _) in container_variables(concern).items():
            key = concern.model_fields[name].alias
            assert f"`{key}`" in documented[variable][1], f"{variable}: the table does not name its stack key {key}"
    assert set(DERIVED_VARIABLES) <= set(documented)
