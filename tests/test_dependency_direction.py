"""Imports point one way, as docs/architecture.md draws them: each package of `app/` imports only packages below it,
the composition root (`app/container.py`, `app/main.py`) sits on top, and the two programs meet only at the container
boundary (`components/` never imports `app/`, `app/` never imports `pulumi` or `components`).

Read from the source with `ast`, so an import inside a function or under `TYPE_CHECKING` counts too.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Bottom first. Packages on one line are peers and must not import each other.
APP_LAYERS: list[set[str]] = [
    {"core"},  # config, logging, Valkey, errors -> problem+json, rate limits, metrics: no domain knowledge
    {"novita"},  # the one client of Novita's API
    {"access"},  # who is asking: API keys as principals (name, team, scopes)
    {"fleet"},  # the instance model: records, states, index, store, views, the cost meter
    {"jobs"},  # the durable queue and its worker, generic over job kinds
    {"products"},  # Novita's catalogue as the API shows it
    {"billing"},  # cost reports over the meter, team budgets and their GPU reservations
    {"lifecycle"},  # policy: placement, readiness, cost guards, reconciliation, webhooks, spot recovery
    {"instances"},  # the instances API: service, job handlers, router
    {"health", "compat", "ui"},  # read-mostly faces over everything below
    {"root"},  # top-level modules: the composition root (container.py, main.py) and the entry points
]
RANK = {package: rank for rank, layer in enumerate(APP_LAYERS) for package in layer}
ROOT_MODULES = {"__init__", "__main__", "main", "container", "healthcheck"}


def imported_modules(path: Path) -> Iterator[str]:
    """Every absolute module name `path` imports."""
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def app_package(path: Path) -> str:
    """The package of `app/` that `path` belongs to ("root" for the modules directly in `app/`)."""
    relative = path.relative_to(ROOT / "app").parts
    return relative[0] if len(relative) > 1 else "root"


def package_of_module(module: str) -> str | None:
    """The package of `app/` an imported module name is in, or None outside `app`."""
    parts = module.split(".")
    if parts[0] != "app" or len(parts) == 1:  # `app` itself holds only `__version__`
        return None
    if parts[1] in ROOT_MODULES:
        return "root"
    return parts[1] if parts[1] in RANK else None


def app_modules() -> list[Path]:
    return sorted((ROOT / "app").rglob("*.py"))


def test_every_app_package_has_a_layer() -> None:
    packages = {app_package(path) for path in app_modules()}
    assert packages - set(RANK) == set(), "add the new package to APP_LAYERS (and to docs/architecture.md)"


@pytest.mark.parametrize("path", app_modules(), ids=lambda path: str(path.relative_to(ROOT)))
def test_app_module_imports_only_lower_packages(path: Path) -> None:
    package = app_package(path)
    upward = sorted(
        {
            module
            for module in imported_modules(path)
            if (target := package_of_module(module)) is not None and target != package and RANK[target] >= RANK[package]
        }
    )
    assert upward == [], f"{package} (layer {RANK[package]}) imports a package at its layer or above: {upward}"


@pytest.mark.parametrize("path", app_modules(), ids=lambda path: str(path.relative_to(ROOT)))
def test_app_never_imports_the_deployment(path: Path) -> None:
    crossing = [module for module in imported_modules(path) if module.split(".")[0] in {"pulumi", "components"}]
    assert crossing == []


@pytest.mark.parametrize(
    "path",
    sorted([*(ROOT / "components").rglob("*.py"), ROOT / "__main__.py"]),
    ids=lambda path: str(path.relative_to(ROOT)),
)
def test_deployment_never_imports_the_app(path: Path) -> None:
    assert [module for module in imported_modules(path) if module.split(".")[0] == "app"] == []


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    """The rule bites: a core module importing a domain package is reported."""
    sample = tmp_path / "sample.py"
    sample.write_text("def later():\n    from app.instances.service import InstanceService\n")
    imported = set(imported_modules(sample))
    assert "app.instances.service" in imported
    assert RANK[package_of_module("app.instances.service") or ""] > RANK["core"]
    assert package_of_module("app.container") == "root"
