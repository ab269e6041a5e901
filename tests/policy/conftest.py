"""Fixtures of the policy pack's tests (helpers in tests/policy/pack.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from pulumi.runtime import config as pulumi_config
from pulumi.runtime import settings as pulumi_settings

from policy import rules
from tests.infra.harness import ProgramRun
from tests.policy.pack import Analyzer


@pytest.fixture
def deploying() -> Iterator[Callable[..., None]]:
    """`deploying(stack, appEnv=None)`: what the CLI tells a pack (stack name, the stack's config); restored after."""
    saved = (pulumi_settings.SETTINGS.project, pulumi_settings.SETTINGS.stack, dict(pulumi_config.CONFIG.get()))

    def to(stack: str, app_env: str | None = None) -> None:
        pulumi_settings.SETTINGS.project = rules.PROJECT
        pulumi_settings.SETTINGS.stack = stack
        config = {} if app_env is None else {f"{rules.PROJECT}:appEnv": app_env}
        pulumi_config.set_all_config(config)

    yield to
    pulumi_settings.SETTINGS.project, pulumi_settings.SETTINGS.stack, config = saved
    pulumi_config.set_all_config(config)


@pytest.fixture
def production(deploying: Callable[..., None]) -> None:
    deploying("prod", "production")


@pytest.fixture
def analyzer(monkeypatch: pytest.MonkeyPatch, deploying: Callable[..., None]) -> Callable[[ProgramRun], Analyzer]:
    """`analyzer(run)`: the library's servicer set up for `run`; `deploying` restores the runtime settings after."""
    return lambda run: Analyzer(run, monkeypatch)
