"""The container probe: `python -m app.healthcheck` (Docker HEALTHCHECK). Standard library only.

Health semantics (docs/architecture.md):
- The probe passes only when `/livez` answers 200 within HEALTHCHECK_TIMEOUT_SECONDS and reports `readyOnce: true`,
  so a container whose Valkey was never reachable never turns healthy (and `pulumi up` with `wait=True` fails).
- Plain Docker never restarts an unhealthy container. So once the app has been ready, the probe counts consecutive
  failures and at HEALTHCHECK_KILL_AFTER sends SIGKILL to the app (pid file, /tmp/app.pid by default); the init
  process (tini) then exits non-zero and the restart policy brings the container back. Before the app was ready
  once, the probe never kills: a slow or misconfigured start is reported, not restart-looped.

The failure count and the "was ready once" flag live in a small state file next to the pid file (in the tmpfs /tmp).
They belong to one app process, identified by its pid and start time, so a restarted process (or a reused pid)
starts with a clean state even when /tmp survives the restart.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

HEALTHY = 0
UNHEALTHY = 1
_ANY_ADDRESS = {"", "0.0.0.0", "::", "[::]"}


class ProbeConfigError(ValueError):
    """An environment variable of the probe has a value it cannot use; the message names the variable."""


@dataclass(frozen=True)
class ProbeConfig:
    """What the probe checks and when it gives up on the app."""

    livez_url: str
    timeout_seconds: float
    kill_after: int
    pid_file: Path

    @property
    def state_file(self) -> Path:
        """Where the failure count is kept between probe runs: beside the pid file."""
        return self.pid_file.with_name("healthcheck-state.json")

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> ProbeConfig:
        """Read HOST, PORT, PID_FILE, HEALTHCHECK_TIMEOUT_SECONDS and HEALTHCHECK_KILL_AFTER."""
        host = environ.get("HOST", "0.0.0.0").strip()
        probe_host = "127.0.0.1" if host in _ANY_ADDRESS else host
        if ":" in probe_host and not probe_host.startswith("["):
            probe_host = f"[{probe_host}]"
        port = _read_number(environ, "PORT", "3003", int, minimum=1)
        return cls(
            livez_url=f"http://{probe_host}:{port}/livez",
            timeout_seconds=_read_number(environ, "HEALTHCHECK_TIMEOUT_SECONDS", "5", float, minimum=0.1),
            kill_after=_read_number(environ, "HEALTHCHECK_KILL_AFTER", "5", int, minimum=1),
            pid_file=Path(environ.get("PID_FILE", "/tmp/app.pid")),
        )


Number = TypeVar("Number", int, float)


def _read_number(environ: Mapping[str, str], name: str, default: str, kind: type[Number], minimum: float) -> Number:
    raw = environ.get(name, default).strip()
    try:
        value = kind(raw)
    except ValueError:
        raise ProbeConfigError(f"{name}: must be a {kind.__name__}, got {raw!r}") from None
    if value < minimum:
        raise ProbeConfigError(f"{name}: must be at least {minimum}, got {raw!r}")
    return value


@dataclass
class ProbeState:
    """Memory of earlier probe runs for one app process."""

    app: str | None = None
    ready_once: bool = False
    failures: int = 0

    @classmethod
    def load(cls, path: Path) -> ProbeState:
        """The saved state, or a fresh one when the file is missing or unreadable."""
        try:
            data = json.loads(path.read_text())
            return cls(app=data.get("app"), ready_once=bool(data.get("ready_once")), failures=int(data["failures"]))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return cls()

    def save(self, path: Path) -> None:
        """Write atomically, so a probe killed by Docker's timeout never leaves half a file."""
        partial = path.with_name(path.name + ".partial")
        partial.write_text(json.dumps({"app": self.app, "ready_once": self.ready_once, "failures": self.failures}))
        os.replace(partial, path)


def read_app_pid(pid_file: Path) -> int | None:
    """The pid the app wrote at start, or None when there is none (yet)."""
    try:
        return int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def process_identity(pid: int | None) -> str | None:
    """`pid:start-time` of a live process; the start time tells a restarted app apart from a reused pid."""
    if pid is None:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22 (starttime) counted after the command name, which is in parentheses and may contain spaces.
    fields_after_name = stat.rsplit(")", 1)[1].split()
    return f"{pid}:{fields_after_name[19]}"


def check_livez(url: str, timeout_seconds: float) -> tuple[bool, bool, str]:
    """Ask /livez once: (answered 200, readyOnce, a one-line description)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_seconds) as response:
            body = json.loads(response.read(4096) or b"{}")
    except urllib.error.HTTPError as error:
        return False, False, f"/livez answered {error.code}"
    except (OSError, ValueError) as error:  # refused, timed out (socket.timeout is an OSError), not JSON
        return False, False, f"/livez did not answer within {timeout_seconds:g}s ({type(error).__name__}: {error})"
    ready_once = isinstance(body, dict) and body.get("readyOnce") is True
    return True, ready_once, f"/livez ok, readyOnce={str(ready_once).lower()}"


def run_probe(config: ProbeConfig) -> tuple[int, str]:
    """Probe once, update the state, kill a wedged app if it is due; return (exit code, message for Docker)."""
    pid = read_app_pid(config.pid_file)
    identity = process_identity(pid)
    state = ProbeState.load(config.state_file)
    if state.app != identity:
        state = ProbeState(app=identity)

    answered, ready_once, description = check_livez(config.livez_url, config.timeout_seconds)
    if answered and ready_once:
        state.ready_once, state.failures = True, 0
        return HEALTHY, f"healthy: {description}" + _remember(state, config.state_file)
    if not state.ready_once:
        message = f"not ready yet (never killed before the first ready): {description}"
        return UNHEALTHY, message + _remember(state, config.state_file)

    state.failures += 1
    message = f"failure {state.failures}/{config.kill_after} after ready: {description}"
    if state.failures >= config.kill_after:
        message += "; " + _kill_app(pid)
    return UNHEALTHY, message + _remember(state, config.state_file)


def _remember(state: ProbeState, path: Path) -> str:
    """Save the state; a note for the probe output when that is impossible (e.g. no writable /tmp)."""
    try:
        state.save(path)
    except OSError as error:
        return f" (cannot record probe state in {path.parent}: {error.strerror}; failures are not counted)"
    return ""


def _kill_app(pid: int | None) -> str:
    if pid is None:
        return "cannot kill the app: no pid file"
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError as error:
        return f"could not kill app pid {pid}: {error.strerror}"
    return f"sent SIGKILL to app pid {pid} so the restart policy restarts the container"


def main() -> int:
    """Entry point of `python -m app.healthcheck`: one line of output, exit 0 (healthy) or 1 (unhealthy)."""
    try:
        config = ProbeConfig.from_env(os.environ)
    except ProbeConfigError as error:
        print(f"probe misconfigured: {error}")
        return UNHEALTHY
    code, message = run_probe(config)
    print(message)
    return code


if __name__ == "__main__":
    sys.exit(main())
