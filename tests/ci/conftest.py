"""Fixtures of the CI tests: the pinned actionlint, installed by scripts/install-actionlint.sh into build/bin."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
INSTALL_SCRIPT = REPO_ROOT / "scripts" / "install-actionlint.sh"
ACTIONLINT = REPO_ROOT / "build" / "bin" / "actionlint"


@pytest.fixture(scope="session")
def actionlint() -> Path:
    """The pinned actionlint; installed on first use when Go is present. In CI (CI=true) its absence fails."""
    if not ACTIONLINT.is_file() and shutil.which("go"):
        subprocess.run(["bash", str(INSTALL_SCRIPT)], check=False, capture_output=True, timeout=600)
    if not ACTIONLINT.is_file():
        message = f"actionlint not found at {ACTIONLINT}: run scripts/install-actionlint.sh (needs Go 1.21+)"
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return ACTIONLINT
