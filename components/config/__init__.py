"""The program's settings: `keys` (every stack key), `validators` and `types` (reusable checks), `models` (one per
concern), `load` (config -> `StackSettings` or one `StackConfigError`). See models.py for how to add a setting."""

from components.config.keys import KEYS, PROJECT, StackConfigError
from components.config.load import load_settings
from components.config.models import (
    AivenValkeySettings,
    ContainerSettings,
    DockerHostSettings,
    HardeningSettings,
    HealthcheckSettings,
    ImageSettings,
    JobSettings,
    LifecycleSettings,
    LocalValkeySettings,
    ProxySettings,
    ServiceSettings,
    StackSettings,
    TlsSettings,
    ValkeySettings,
    WebhookSettings,
)

__all__ = [
    "KEYS",
    "PROJECT",
    "AivenValkeySettings",
    "ContainerSettings",
    "DockerHostSettings",
    "HardeningSettings",
    "HealthcheckSettings",
    "ImageSettings",
    "JobSettings",
    "LifecycleSettings",
    "LocalValkeySettings",
    "ProxySettings",
    "ServiceSettings",
    "StackConfigError",
    "StackSettings",
    "TlsSettings",
    "ValkeySettings",
    "WebhookSettings",
    "load_settings",
]
