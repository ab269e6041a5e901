"""Real redis-server processes for the tests: plain (`redis_server`) and TLS with a password (`redis_tls_server`).

Each is session-scoped, listens on a free 127.0.0.1 port with its own temporary directory, and can be stopped,
started and restarted on the same port so tests can take Valkey away and bring it back. `stop(save=True)` runs
`SHUTDOWN SAVE`, so what was written survives the restart (the RDB lives in the server's directory).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import trustme

from tests.loopback import free_port

REDIS_SERVER_BINARY = "/usr/bin/redis-server"
_START_TIMEOUT_SECONDS = 10.0


class RedisServer:
    """A redis-server child process on a fixed port; `url` is what the app gets as REDIS_URL."""

    def __init__(self, directory: Path, *, tls: bool = False, password: str | None = None) -> None:
        self.directory = directory
        self.port = free_port()
        self.tls = tls
        self.password = password
        self.ca_path: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._config_path = directory / "redis.conf"
        self._write_config()

    @property
    def url(self) -> str:
        """`redis://127.0.0.1:<port>`, or `rediss://default:<password>@127.0.0.1:<port>` for the TLS server."""
        scheme = "rediss" if self.tls else "redis"
        auth = f"default:{self.password}@" if self.password else ""
        return f"{scheme}://{auth}127.0.0.1:{self.port}"

    @property
    def is_running(self) -> bool:
        """Whether the process is alive."""
        return self._process is not None and self._process.poll() is None

    def client(self) -> redis.Redis:
        """A synchronous client for assertions and set-up (decoded strings)."""
        options: dict[str, object] = {"decode_responses": True, "socket_timeout": 5}
        if self.tls:
            options["ssl_ca_certs"] = str(self.ca_path)
        return redis.Redis.from_url(self.url, **options)

    def start(self) -> None:
        """Start the server (loading its RDB if one was saved) and wait until it answers PING."""
        if self.is_running:
            return
        log = open(self.directory / "redis.log", "ab")  # noqa: SIM115  (kept open for the child's lifetime)
        self._process = subprocess.Popen([REDIS_SERVER_BINARY, str(self._config_path)], stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + _START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"redis-server exited at start; see {self.directory / 'redis.log'}")
            try:
                with self.client() as client:
                    if client.ping():
                        return
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not answer within {_START_TIMEOUT_SECONDS} s")

    def stop(self, *, save: bool = True) -> None:
        """Shut the server down (`SHUTDOWN SAVE` keeps the data for the next start, `save=False` drops it)."""
        if not self.is_running:
            return
        assert self._process is not None
        try:
            with self.client() as client:
                client.shutdown(save=save, nosave=not save)
        except redis.ConnectionError:
            pass  # the server closes the connection as it exits
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        if not save:
            (self.directory / "dump.rdb").unlink(missing_ok=True)

    def restart(self, *, save: bool = True) -> None:
        """Stop and start again on the same port."""
        self.stop(save=save)
        self.start()

    def flushall(self) -> None:
        """Start from an empty database (tests share one server)."""
        with self.client() as client:
            client.flushall()

    def _write_config(self) -> None:
        lines = [
            "bind 127.0.0.1",
            "protected-mode no",
            f"dir {self.directory}",
            'save ""',  # snapshots only on SHUTDOWN SAVE: deterministic and fast
            "appendonly no",
            "dbfilename dump.rdb",
            "daemonize no",
            "loglevel warning",
        ]
        if self.password:
            lines.append(f"requirepass {self.password}")
        if self.tls:
            ca = trustme.CA()
            server_cert = ca.issue_cert("127.0.0.1", "localhost")
            self.ca_path = self.directory / "ca.pem"
            ca.cert_pem.write_to_path(str(self.ca_path))
            server_cert.cert_chain_pems[0].write_to_path(str(self.directory / "server.pem"))
            server_cert.private_key_pem.write_to_path(str(self.directory / "server.key"))
            lines += [
                "port 0",
                f"tls-port {self.port}",
                f"tls-cert-file {self.directory / 'server.pem'}",
                f"tls-key-file {self.directory / 'server.key'}",
                f"tls-ca-cert-file {self.ca_path}",
                "tls-auth-clients no",
            ]
        else:
            lines.append(f"port {self.port}")
        self._config_path.write_text("\n".join(lines) + "\n")


def _require_redis_server() -> None:
    if shutil.which(REDIS_SERVER_BINARY) is None:
        pytest.fail(
            f"{REDIS_SERVER_BINARY} not found: the app tests need a real Redis. "
            "Install it with `apt-get install redis-server` (the service it starts can be stopped)."
        )


def _serve(directory: Path, *, tls: bool, password: str | None) -> Iterator[RedisServer]:
    _require_redis_server()
    server = RedisServer(directory, tls=tls, password=password)
    server.start()
    try:
        yield server
    finally:
        server.stop(save=False)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A plain redis-server on 127.0.0.1 for the whole session (flush it in tests that need an empty database)."""
    yield from _serve(tmp_path_factory.mktemp("redis"), tls=False, password=None)


@pytest.fixture(scope="session")
def redis_tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A TLS-only redis-server with a password, like Aiven; trust `ca_path` (made with trustme) to connect."""
    yield from _serve(tmp_path_factory.mktemp("redis-tls"), tls=True, password="tls-test-password-7f3a")
