"""The lifecycle settings: read from the environment like every other setting, checked, and mapped onto the
automations (production blocks private webhook targets unless explicitly allowed)."""

from __future__ import annotations

import base64

import pytest

from app.core.config import ConfigError, Settings, load_settings
from app.lifecycle.automation import lifecycle_config

BASE_ENV = {"REDIS_URL": "redis://127.0.0.1:6379", "NOVITA_API_KEY": "novita-key-for-config-tests"}


def settings_from(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    """Settings read from exactly `BASE_ENV` + `env` (whatever else the environment holds is removed)."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    for name, value in {**BASE_ENV, **env}.items():
        monkeypatch.setenv(name, value)
    return load_settings()


def test_defaults_turn_the_cost_guards_on_and_spot_recovery_off(monkeypatch: pytest.MonkeyPatch) -> None:
    config = lifecycle_config(settings_from(monkeypatch))
    assert config.guards.idle_stop_enabled and config.guards.idle_timeout_seconds == 1800
    assert config.guards.startup_grace_seconds == 2700 and config.guards.provisioning_timeout_seconds == 1800
    assert config.guards.max_lifetime_seconds is None and not config.guards.dry_run
    assert not config.spot.enabled and config.webhook_url is None and config.webhook_signing_key is None
    assert not config.webhook_block_private  # development


def test_environment_variables_change_the_automations(monkeypatch: pytest.MonkeyPatch) -> None:
    config = lifecycle_config(
        settings_from(
            monkeypatch,
            AUTO_STOP_IDLE_SECONDS="600",
            AUTO_STOP_DRY_RUN="true",
            MAX_INSTANCE_LIFETIME_SECONDS="86400",
            SPOT_RECOVERY_ENABLED="true",
            WEBHOOK_URL="https://hooks.example/novita",
            WEBHOOK_SECRET="s3cret-value",
            RECONCILE_INTERVAL_SECONDS="120",
        )
    )
    assert config.guards.idle_timeout_seconds == 600 and config.guards.dry_run
    assert config.guards.max_lifetime_seconds == 86400 and config.spot.enabled
    assert config.webhook_url == "https://hooks.example/novita" and config.webhook_signing_key == b"s3cret-value"
    assert config.reconcile_interval_seconds == 120


def test_production_blocks_private_webhook_targets_unless_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    production = {
        "APP_ENV": "production",
        "API_KEYS": "ops:0123456789abcdef0123",
        "API_KEY_HASH_SECRET": "0123456789abcdef0123456789abcdef",
    }
    assert lifecycle_config(settings_from(monkeypatch, **production)).webhook_block_private
    allowed = settings_from(monkeypatch, **production, WEBHOOK_ALLOW_PRIVATE_TARGETS="true")
    assert not lifecycle_config(allowed).webhook_block_private


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"WEBHOOK_URL": "https://hooks.example/x"}, "WEBHOOK_SECRET: is required when WEBHOOK_URL is set"),
        ({"WEBHOOK_URL": "ftp://hooks.example/x", "WEBHOOK_SECRET": "s"}, "WEBHOOK_URL: must be an http(s) URL"),
        ({"AUTO_STOP_IDLE_SECONDS": "0"}, "AUTO_STOP_IDLE_SECONDS"),
        ({"WEBHOOK_SECRET": "whsec_not base64!"}, "WEBHOOK_SECRET: after 'whsec_' must come the key in base64"),
        ({"WEBHOOK_SECRET": "whsec_"}, "WEBHOOK_SECRET: has no key after 'whsec_'"),
    ],
)
def test_bad_lifecycle_settings_are_named(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        settings_from(monkeypatch, **env)


def test_a_whsec_secret_is_decoded_and_a_plain_secret_is_its_own_key(monkeypatch: pytest.MonkeyPatch) -> None:
    standard = settings_from(monkeypatch, WEBHOOK_SECRET="whsec_" + base64.b64encode(b"\x00key bytes\xff").decode())
    unpadded = settings_from(monkeypatch, WEBHOOK_SECRET="whsec_" + base64.b64encode(b"key").decode().rstrip("="))
    plain = settings_from(monkeypatch, WEBHOOK_SECRET="s3cret-value")
    assert standard.webhook_signing_key == b"\x00key bytes\xff"
    assert unpadded.webhook_signing_key == b"key"  # the library accepts unpadded base64 too
    assert plain.webhook_signing_key == b"s3cret-value"
    assert settings_from(monkeypatch).webhook_signing_key is None


def test_webhook_secret_and_url_are_redacted_from_logs(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_from(monkeypatch, WEBHOOK_URL="https://hooks.example/t0ken", WEBHOOK_SECRET="s3cret-value")
    assert {"s3cret-value", "https://hooks.example/t0ken"} <= set(settings.secret_values())
