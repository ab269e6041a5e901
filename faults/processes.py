"""The real processes a fault case runs, all on 127.0.0.1: a redis-server standing in for Valkey, the fake Novita
server (`python -m tests.fakes.novita`) and API replicas (`python -m app`, configured by environment variables
exactly as the container is). Every process started here is stopped by `Stack.close()`."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from tests.fakes.fixtures import FakeNovitaHandle
from tests.fixtures_redis import RedisServer
from tests.loopback import LOOPBACK, free_port, wait_until

REPO_ROOT = Path(__file__).resolve().parents[1]
_STOP_TIMEOUT_SECONDS = 10.0

# Short timings so reclaims, retries and polls happen within a second or two (all documented settings).
FAST_API_ENV: dict[str, str] = {
    "APP_ENV": "production",
    "LOG_LEVEL": "INFO",
    "SHUTDOWN_GRACE_SECONDS": "2",
    "REDIS_CONNECT_TIMEOUT_SECONDS": "1",
    "REDIS_SOCKET_TIMEOUT_SECONDS": "2",
    "REDIS_STARTUP_RETRY_MAX_DELAY_SECONDS": "0.5",
    "REDIS_MONITOR_INTERVAL_SECONDS": "0.5",
    "JOB_READ_BLOCK_SECONDS": "0.5",
    "JOB_VISIBILITY_TIMEOUT_SECONDS": "5",
    "JOB_RECLAIM_INTERVAL_SECONDS": "0.5",
    "JOB_SCHEDULER_INTERVAL_SECONDS": "0.1",
    "JOB_RETRY_BASE_SECONDS": "0.2",
    "JOB_RETRY_MAX_SECONDS": "2",
    "JOB_CONCURRENCY": "8",
    "INSTANCE_POLL_INTERVAL_SECONDS": "1",  # a fallback: the sync wakes a job when its instance settles
    "INSTANCE_PROVISIONING_TIMEOUT_SECONDS": "300",
    # Jobs watch their instances through the background sync (one Novita listing for all): keep it brisk too.
    "RECONCILE_INTERVAL_SECONDS": "1",
    "RECONCILE_LEASE_SECONDS": "3",
    "LIFECYCLE_TICK_SECONDS": "0.2",
    "NOVITA_TIMEOUT_SECONDS": "2",
    "NOVITA_RATE_LIMIT_PER_SECOND": "200",
    "NOVITA_BREAKER_RESET_SECONDS": "2",
    # The campaign's client sends far more than a production budget; the limiter still counts every request in
    # Valkey (and fails open during the Valkey outage), it just never refuses here.
    "RATE_LIMIT_REQUESTS": "1000000",
}


def answers(url: str, status: int = 200) -> bool:
    """Whether GET `url` answers `status` now (False while nothing listens)."""
    try:
        return httpx.get(url, timeout=2).status_code == status
    except httpx.HTTPError:
        return False


class ChildProcess:
    """One child process with its output in `log_path`; `kill()` is SIGKILL, `stop()` SIGTERM then SIGKILL."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.command = command
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Spawn the process (appending to its log)."""
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command, cwd=REPO_ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )

    @property
    def alive(self) -> bool:
        """Whether the process runs."""
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL, as the kernel's OOM killer or `docker kill` would."""
        if self.process is not None and self.alive:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        if self.process is None or not self.alive:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=_STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            self.kill()


class ApiProcess(ChildProcess):
    """`python -m app` on its own port; the API key and URLs come from the `Stack`."""

    def __init__(self, name: str, env: dict[str, str], work_dir: Path) -> None:
        self.port = free_port()
        env = {**env, "HOST": LOOPBACK, "PORT": str(self.port), "PID_FILE": str(work_dir / f"{name}.pid")}
        super().__init__(name, [sys.executable, "-m", "app"], env, work_dir / f"{name}.log")

    @property
    def url(self) -> str:
        """Base URL."""
        return f"http://{LOOPBACK}:{self.port}"

    def wait_ready(self, timeout_seconds: float = 30.0) -> float:
        """Wait for /readyz 200; returns when (monotonic)."""
        return wait_until(
            f"{self.name} /readyz 200",
            lambda: self._check() and answers(self.url + "/readyz"),
            timeout_seconds,
            interval=0.05,
        )

    def _check(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{self.name} exited with {self.process.returncode}; log tail:\n{tail}")
        return True


class Stack:
    """A redis-server, the fake Novita and any number of API replicas, in `work_dir`."""

    def __init__(self, work_dir: Path, *, fake_step_seconds: float = 0.1) -> None:
        self.work_dir = work_dir
        work_dir.mkdir(parents=True, exist_ok=True)
        self.client_key = "faults-" + secrets.token_hex(16)
        self.api_key_hash_secret = secrets.token_hex(24)
        self.novita_key = "fake-novita-" + secrets.token_hex(12)
        (work_dir / "redis").mkdir(exist_ok=True)
        self.redis = RedisServer(work_dir / "redis")
        fake_port = free_port()
        self.fake = ChildProcess(
            "fake-novita",
            [
                sys.executable,
                "-m",
                "tests.fakes.novita",
                "--host",
                LOOPBACK,
                "--port",
                str(fake_port),
                "--api-key",
                self.novita_key,
                "--step-seconds",
                str(fake_step_seconds),
            ],
            dict(os.environ),
            work_dir / "fake-novita.log",
        )
        self.novita = FakeNovitaHandle(f"http://{LOOPBACK}:{fake_port}", self.novita_key)
        self.apis: list[ApiProcess] = []

    def start(self) -> None:
        """Start Valkey and the fake (the APIs are started by `add_api`)."""
        self.redis.start()
        self.fake.start()
        wait_until("the fake Novita", lambda: answers(self.novita.root_url + "/_fake/calls"), 30, 0.05)

    def api_env(self, **overrides: Any) -> dict[str, str]:
        """The container contract's variables for an API replica of this stack."""
        env = {
            **os.environ,
            **FAST_API_ENV,
            "REDIS_URL": self.redis.url,
            "NOVITA_API_KEY": self.novita_key,
            "NOVITA_BASE_URL": self.novita.base_url,
            "API_KEYS": f"faults:{self.client_key}",
            "API_KEY_HASH_SECRET": self.api_key_hash_secret,  # one for every replica: they must hash keys alike
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        env.update({name.upper(): str(value) for name, value in overrides.items()})
        return env

    def add_api(self, **overrides: Any) -> ApiProcess:
        """Start one more API replica and wait until it is ready."""
        api = ApiProcess(f"api-{len(self.apis) + 1}", self.api_env(**overrides), self.work_dir)
        self.apis.append(api)
        api.start()
        api.wait_ready()
        return api

    def close(self) -> None:
        """Stop everything this stack started."""
        for api in self.apis:
            api.stop()
        self.fake.stop()
        self.novita.close()
        self.redis.stop(save=False)
