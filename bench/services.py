"""The processes a benchmark run needs, all on 127.0.0.1 and all stopped at the end: a redis-server standing in
for Valkey, the fake Novita server, the API under uvicorn and the baseline hello-world under the same uvicorn."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.fixtures_redis import RedisServer
from tests.loopback import LOOPBACK, free_port, wait_until

REPO_ROOT = Path(__file__).resolve().parents[1]
# The flags of the container's command (app/Dockerfile CMD), so the API and the baseline run the same server.
UVICORN_FLAGS = ("--workers", "1", "--no-server-header")
API_APP = ("app.main:create_app", "--factory")
BASELINE_APP = ("bench.baseline:app",)
FASTAPI_BASELINE_APP = ("bench.baseline:create_fastapi_app", "--factory")
_STOP_TIMEOUT_SECONDS = 10.0


def answers_200(client: httpx.Client, url: str) -> bool:
    """Whether GET `url` answers 200 now (False while nothing listens)."""
    try:
        return client.get(url).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass
class ServerProcess:
    """A uvicorn (or fake) child process listening on `port`; its output goes to `log_path`."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    started_at: float  # monotonic time just before the process was spawned

    @property
    def url(self) -> str:
        """Base URL on loopback."""
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int:
        """The server's process id (uvicorn with one worker serves in this very process)."""
        return self.process.pid

    def check_alive(self) -> None:
        """Raise with the log's tail if the process exited."""
        if self.process.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{self.name} exited with {self.process.returncode}; log tail:\n{tail}")

    def stop(self) -> None:
        """SIGTERM (uvicorn drains), then SIGKILL if it does not exit in time."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=_STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class Services:
    """Starts the run's processes and stops every one of them on `close()` (use it as a context manager)."""

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = work_dir
        self.novita_api_key = "bench-novita-" + secrets.token_hex(8)
        self.client_api_key = "bench-client-" + secrets.token_hex(8)
        self.api_key_hash_secret = secrets.token_hex(24)
        self.http = httpx.Client(timeout=5.0)
        self._stack = ExitStack()
        self._stack.callback(self.http.close)
        self.redis = self._start_redis()
        self.novita = self._start_novita()

    def __enter__(self) -> Services:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop every process this object started, newest first."""
        self._stack.close()

    # -- the dependencies ---------------------------------------------------------------------------------------

    def _start_redis(self) -> RedisServer:
        directory = self.work_dir / "redis"
        directory.mkdir()
        server = RedisServer(directory)
        self._stack.callback(server.stop, save=False)
        server.start()
        return server

    def _start_novita(self) -> ServerProcess:
        port = free_port()
        # Instances reach `running` quickly, so the create job's polling ends before the reads are measured.
        command = [
            sys.executable,
            "-m",
            "tests.fakes.novita",
            "--host",
            LOOPBACK,
            "--port",
            str(port),
            "--api-key",
            self.novita_api_key,
            "--step-seconds",
            "0.05",
        ]
        fake = self._spawn("fake-novita", command, port, env=os.environ.copy())
        wait_until("the fake Novita to listen", lambda: _alive_and(fake, f"{fake.url}/_fake/calls", self.http), 30)
        return fake

    # -- the servers under test ---------------------------------------------------------------------------------

    def api_env(self, **overrides: str) -> dict[str, str]:
        """The container contract's variables (docs/architecture.md) pointing at this run's Valkey and fake."""
        env = {
            **os.environ,
            "APP_ENV": "production",
            "LOG_LEVEL": "INFO",
            "REDIS_URL": self.redis.url,
            "NOVITA_API_KEY": self.novita_api_key,
            "NOVITA_BASE_URL": f"{self.novita.url}/gpu-instance/openapi/v1",
            "API_KEYS": f"bench:{self.client_api_key}",
            "API_KEY_HASH_SECRET": self.api_key_hash_secret,
            "PID_FILE": str(self.work_dir / "app.pid"),
            # The per-key limit (600/min by default) would turn the load runs into 429s; a limit no run reaches
            # keeps its per-request cost (one count in Valkey) in the figures.
            "RATE_LIMIT_REQUESTS": str(10**9),
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        env.update(overrides)
        return env

    def start_api(self, name: str = "api", **env_overrides: str) -> ServerProcess:
        """Spawn the API under uvicorn with the container's flags (and `env_overrides`); does not wait for it."""
        port = free_port()
        return self._spawn(
            name, self._uvicorn_command(API_APP, port), port, env=self.api_env(PORT=str(port), **env_overrides)
        )

    def start_baseline(self, name: str = "baseline", app: tuple[str, ...] = BASELINE_APP) -> ServerProcess:
        """Spawn a hello-world (bare ASGI by default) under the same uvicorn and flags; does not wait for it."""
        port = free_port()
        return self._spawn(name, self._uvicorn_command(app, port), port, env=os.environ.copy())

    def wait_ready(self, server: ServerProcess, path: str, timeout_seconds: float = 30.0) -> float:
        """Wait until GET `path` answers 200; returns the seconds since the process was spawned."""
        url = f"{server.url}{path}"
        ready_at = wait_until(f"{server.name} {path}", lambda: _alive_and(server, url, self.http), timeout_seconds)
        return ready_at - server.started_at

    def stop(self, server: ServerProcess) -> None:
        """Stop one server now (it is also stopped at `close()` if this is not called)."""
        server.stop()

    def _uvicorn_command(self, app: tuple[str, ...], port: int) -> list[str]:
        return [sys.executable, "-m", "uvicorn", *app, "--host", LOOPBACK, "--port", str(port), *UVICORN_FLAGS]

    def _spawn(self, name: str, command: list[str], port: int, env: dict[str, str]) -> ServerProcess:
        log_path = self.work_dir / f"{name}-{port}.log"
        with open(log_path, "wb") as log:
            started_at = time.monotonic()
            process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        server = ServerProcess(name, process, port, log_path, started_at)
        self._stack.callback(server.stop)
        return server


def _alive_and(server: ServerProcess, url: str, client: httpx.Client) -> bool:
    server.check_alive()
    return answers_200(client, url)
