"""Configuration from the environment: each bad value gives one clear error naming the variable, never the value."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.core.config import ConfigError, Settings, load_settings

REPO_ROOT = Path(__file__).resolve().parents[2]
NOVITA_KEY = "sk_novita_0123456789abcdef"
VALID_ENV = {"NOVITA_API_KEY": NOVITA_KEY, "REDIS_URL": "redis://127.0.0.1:6379/0"}


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """An environment with none of our variables set, then the minimal valid ones."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    for name, value in VALID_ENV.items():
        monkeypatch.setenv(name, value)
    return monkeypatch


def config_error(env: pytest.MonkeyPatch, **variables: str | None) -> str:
    """Apply `variables` (None deletes) and return the message of the ConfigError that must follow."""
    for name, value in variables.items():
        if value is None:
            env.delenv(name, raising=False)
        else:
            env.setenv(name, value)
    with pytest.raises(ConfigError) as raised:
        load_settings()
    message = str(raised.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("variables", "expected", "secret"),
    [
        ({"NOVITA_API_KEY": None}, "NOVITA_API_KEY: is required", None),
        ({"NOVITA_API_KEY": "  "}, "NOVITA_API_KEY: is empty", None),
        (
            {"REDIS_URL": "http://default:hunter2-valkey@db.example:6379"},
            "REDIS_URL: must start with redis://, rediss:// or valkeys://",
            "hunter2-valkey",
        ),
        ({"REDIS_URL": None}, "REDIS_URL: is required (or REDIS_HOST", None),
        ({"API_KEYS": "just-one-long-key-without-name"}, "API_KEYS: entry 1 must be name:key", None),
        ({"API_KEYS": "ci:short-key-99"}, "API_KEYS: key of 'ci' must be at least 16 characters", "short-key-99"),
        (
            {"API_KEYS": "ci:aaaaaaaaaaaaaaaa1,ops:aaaaaaaaaaaaaaaa1"},
            "API_KEYS: 'ops' is listed twice or shares its key",
            "aaaaaaaaaaaaaaaa1",
        ),
        ({"APP_ENV": "production"}, "API_KEYS: is required when APP_ENV=production", None),
        (
            {"APP_ENV": "production", "API_KEYS": "ci:0123456789abcdef0123"},
            "API_KEY_HASH_SECRET: is required when APP_ENV=production",
            "0123456789abcdef0123",
        ),
        (
            {"API_KEY_HASH_SECRET": "hash-secret-too-short-0f1e"},
            "API_KEY_HASH_SECRET: must be at least 32 characters",
            "hash-secret-too-short-0f1e",
        ),
        (
            {
                "APP_ENV": "production",
                "API_KEYS": "ci:0123456789abcdef0123",
                "API_KEY_HASH_SECRET": "0123456789abcdef0123456789abcdef",
                "FAULT_INJECTION": "true",
            },
            "FAULT_INJECTION: is refused when APP_ENV=production",
            "0123456789abcdef0123",
        ),
        ({"APP_ENV": "staging"}, "APP_ENV: Input should be 'development' or 'production'", None),
        ({"PORT": "eighty"}, "PORT: Input should be a valid integer", None),
        ({"REDIS_CA_CERT": "/nonexistent/ca.pem"}, "REDIS_CA_CERT: is not a readable file", None),
        (
            {"REDIS_HEALTH_CHECK_INTERVAL_SECONDS": "300"},
            "REDIS_HEALTH_CHECK_INTERVAL_SECONDS: Input should be less",
            None,
        ),
        ({"NOVITA_BASE_URL": "ftp://novita"}, "NOVITA_BASE_URL: must be an http(s) URL", None),
    ],
)
def test_each_bad_variable_is_named_without_its_value(
    env: pytest.MonkeyPatch, variables: dict[str, str | None], expected: str, secret: str | None
) -> None:
    message = config_error(env, **variables)
    assert message.startswith("invalid configuration: ")
    assert expected in message
    assert NOVITA_KEY not in message
    if secret is not None:
        assert secret not in message


def test_valid_environment_is_read_with_defaults_and_secrets_hidden(env: pytest.MonkeyPatch) -> None:
    env.setenv("API_KEYS", "ci:0123456789abcdef,ops:fedcba9876543210")
    settings = load_settings()
    assert settings.port == 3003 and settings.host == "0.0.0.0" and settings.app_env == "development"
    assert settings.redis_health_check_interval_seconds < 300  # below Aiven's idle timeout
    assert set(settings.client_api_keys) == {"ci", "ops"}
    assert settings.client_api_keys["ci"].get_secret_value() == "0123456789abcdef"
    assert NOVITA_KEY not in repr(settings) and "0123456789abcdef" not in repr(settings)
    assert settings.openapi_docs_enabled is True


def test_aiven_valkeys_url_becomes_rediss(env: pytest.MonkeyPatch) -> None:
    env.setenv("REDIS_URL", "valkeys://default:pw@valkey-x.aivencloud.com:13345")
    settings = load_settings()
    assert settings.redis_connection_url == "rediss://default:pw@valkey-x.aivencloud.com:13345"
    assert settings.redis_uses_tls


def test_seed_style_host_port_password_tls(env: pytest.MonkeyPatch) -> None:
    env.delenv("REDIS_URL")
    env.setenv("REDIS_HOST", "valkey-x.aivencloud.com")
    env.setenv("REDIS_PORT", "13345")
    env.setenv("REDIS_PASSWORD", "p@ss/word")
    env.setenv("REDIS_TLS", "true")
    settings = load_settings()
    assert settings.redis_connection_url == "rediss://:p%40ss%2Fword@valkey-x.aivencloud.com:13345"
    assert "p@ss/word" in settings.secret_values()


def test_production_turns_docs_off_unless_enabled(env: pytest.MonkeyPatch) -> None:
    env.setenv("APP_ENV", "production")
    env.setenv("API_KEYS", "ci:0123456789abcdef")
    env.setenv("API_KEY_HASH_SECRET", "0123456789abcdef0123456789abcdef")
    assert load_settings().openapi_docs_enabled is False
    env.setenv("DOCS_ENABLED", "true")
    assert load_settings().openapi_docs_enabled is True


@pytest.mark.parametrize(
    "command",
    [
        [sys.executable, "-m", "app"],
        [sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory"],
    ],
    ids=["python-m-app", "uvicorn-factory"],
)
def test_process_exits_non_zero_with_one_line_naming_the_variable(command: list[str]) -> None:
    environment = {key: value for key, value in os.environ.items() if key.upper() not in _our_variables()}
    environment.update({"NOVITA_API_KEY": NOVITA_KEY, "REDIS_URL": "mysql://root:s3cr3t-db@db:3306"})
    finished = subprocess.run(command, env=environment, cwd=REPO_ROOT, capture_output=True, text=True, timeout=30)
    assert finished.returncode == 2
    assert finished.stderr.strip() == (
        "invalid configuration: REDIS_URL: must start with redis://, rediss:// or valkeys://"
    )
    assert "s3cr3t-db" not in finished.stdout + finished.stderr


def _our_variables() -> set[str]:
    return {name.upper() for name in Settings.model_fields}
