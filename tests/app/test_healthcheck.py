"""The container probe (`python -m app.healthcheck`) against a real local HTTP server and a real process it may kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from app.healthcheck import HEALTHY, UNHEALTHY, ProbeConfig, ProbeConfigError, run_probe


@dataclass
class LivezBehaviour:
    """What the fake app answers on /livez."""

    status: int = 200
    ready_once: bool = True
    delay_seconds: float = 0.0


@pytest.fixture
def livez() -> Iterator[tuple[str, LivezBehaviour]]:
    """A real HTTP server on loopback whose /livez answer the test controls."""
    behaviour = LivezBehaviour()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            time.sleep(behaviour.delay_seconds)
            body = json.dumps({"status": "ok", "readyOnce": behaviour.ready_once}).encode()
            self.send_response(behaviour.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/livez", behaviour
    server.shutdown()
    server.server_close()


@pytest.fixture
def app_process(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A dummy 'app' process whose pid is in the pid file, as the real app writes it at start."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    (tmp_path / "app.pid").write_text(f"{process.pid}\n")
    yield process
    if process.poll() is None:
        process.kill()
    process.wait(timeout=10)


def config_for(url: str, tmp_path: Path, kill_after: int = 3, timeout_seconds: float = 0.5) -> ProbeConfig:
    return ProbeConfig(
        livez_url=url, timeout_seconds=timeout_seconds, kill_after=kill_after, pid_file=tmp_path / "app.pid"
    )


def exit_status(process: subprocess.Popen[bytes], timeout: float = 5.0) -> int | None:
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


def test_passes_when_livez_answers_and_app_was_ready(livez, app_process, tmp_path):
    url, _ = livez
    code, message = run_probe(config_for(url, tmp_path))
    assert code == HEALTHY
    assert "readyOnce=true" in message


def test_never_ready_app_is_unhealthy_but_never_killed(livez, app_process, tmp_path):
    url, behaviour = livez
    behaviour.ready_once = False
    config = config_for(url, tmp_path, kill_after=2)
    for _ in range(5):
        code, message = run_probe(config)
        assert code == UNHEALTHY
        assert "not ready yet" in message
    assert app_process.poll() is None, "the probe killed an app that had never been ready"


def test_unanswered_probe_before_ready_never_kills(tmp_path, app_process):
    config = config_for("http://127.0.0.1:9/livez", tmp_path, kill_after=1)
    for _ in range(3):
        assert run_probe(config)[0] == UNHEALTHY
    assert app_process.poll() is None


def test_kills_the_app_after_kill_after_consecutive_failures(livez, app_process, tmp_path):
    url, behaviour = livez
    config = config_for(url, tmp_path, kill_after=3)
    assert run_probe(config)[0] == HEALTHY
    behaviour.status = 500
    for attempt in (1, 2):
        code, message = run_probe(config)
        assert code == UNHEALTHY
        assert f"failure {attempt}/3" in message
        assert app_process.poll() is None, f"killed after only {attempt} failures"
    code, message = run_probe(config)
    assert code == UNHEALTHY
    assert f"sent SIGKILL to app pid {app_process.pid}" in message
    assert exit_status(app_process) == -signal.SIGKILL


def test_a_success_resets_the_failure_count(livez, app_process, tmp_path):
    url, behaviour = livez
    config = config_for(url, tmp_path, kill_after=2)
    assert run_probe(config)[0] == HEALTHY
    behaviour.status = 503
    assert "failure 1/2" in run_probe(config)[1]
    behaviour.status = 200
    assert run_probe(config)[0] == HEALTHY
    behaviour.status = 503
    assert "failure 1/2" in run_probe(config)[1]
    assert app_process.poll() is None


def test_slow_answer_counts_as_failure_and_ends_in_kill(livez, app_process, tmp_path):
    """A blocked event loop: the port accepts but nothing answers within the timeout."""
    url, behaviour = livez
    config = config_for(url, tmp_path, kill_after=2, timeout_seconds=0.3)
    assert run_probe(config)[0] == HEALTHY
    behaviour.delay_seconds = 1.0
    code, message = run_probe(config)
    assert code == UNHEALTHY and "did not answer within 0.3s" in message
    run_probe(config)
    assert exit_status(app_process) == -signal.SIGKILL


def test_frozen_process_is_killed(livez, app_process, tmp_path):
    """SIGSTOP: the process cannot run its handlers, SIGKILL still ends it."""
    url, behaviour = livez
    config = config_for(url, tmp_path, kill_after=1)
    assert run_probe(config)[0] == HEALTHY
    os.kill(app_process.pid, signal.SIGSTOP)
    behaviour.status = 500
    run_probe(config)
    assert exit_status(app_process) == -signal.SIGKILL


def test_a_new_app_process_starts_with_a_clean_state(livez, app_process, tmp_path):
    """After a restart the new process must get its own start-up grace, even if /tmp kept the old state."""
    url, behaviour = livez
    config = config_for(url, tmp_path, kill_after=1)
    assert run_probe(config)[0] == HEALTHY
    replacement = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (tmp_path / "app.pid").write_text(str(replacement.pid))
        behaviour.ready_once = False
        code, message = run_probe(config)
        assert code == UNHEALTHY and "not ready yet" in message
        assert replacement.poll() is None
    finally:
        replacement.kill()
        replacement.wait(timeout=10)


def test_missing_pid_file_after_ready_is_reported(livez, tmp_path):
    url, behaviour = livez
    config = config_for(url, tmp_path, kill_after=1)
    assert run_probe(config)[0] == HEALTHY
    behaviour.status = 500
    code, message = run_probe(config)
    assert code == UNHEALTHY
    assert "no pid file" in message


def test_config_from_env_reads_the_contract_variables():
    config = ProbeConfig.from_env(
        {"PORT": "4000", "HEALTHCHECK_TIMEOUT_SECONDS": "2.5", "HEALTHCHECK_KILL_AFTER": "7", "PID_FILE": "/run/x.pid"}
    )
    assert config.livez_url == "http://127.0.0.1:4000/livez"
    assert (config.timeout_seconds, config.kill_after, config.pid_file) == (2.5, 7, Path("/run/x.pid"))
    assert config.state_file == Path("/run/healthcheck-state.json")
    defaults = ProbeConfig.from_env({})
    assert (defaults.livez_url, defaults.timeout_seconds, defaults.kill_after) == (
        "http://127.0.0.1:3003/livez",
        5.0,
        5,
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("HEALTHCHECK_KILL_AFTER", "0"),
        ("HEALTHCHECK_KILL_AFTER", "five"),
        ("HEALTHCHECK_TIMEOUT_SECONDS", "soon"),
        ("PORT", "-1"),
    ],
)
def test_bad_config_names_the_variable(name, value):
    with pytest.raises(ProbeConfigError, match=name):
        ProbeConfig.from_env({name: value})


def test_module_entry_point_exit_codes(livez, app_process, tmp_path):
    """`python -m app.healthcheck` as Docker runs it: exit 0 when healthy, 1 with the reason otherwise."""
    url, behaviour = livez
    port = url.rsplit(":", 1)[1].split("/")[0]
    env = {
        **os.environ,
        "HOST": "0.0.0.0",
        "PORT": port,
        "PID_FILE": str(tmp_path / "app.pid"),
        "HEALTHCHECK_TIMEOUT_SECONDS": "1",
        "HEALTHCHECK_KILL_AFTER": "1",
    }

    def probe() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "app.healthcheck"],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            cwd=Path(__file__).resolve().parents[2],
        )

    healthy = probe()
    assert (healthy.returncode, healthy.stdout.startswith("healthy")) == (0, True)
    behaviour.status = 500
    killed = probe()
    assert killed.returncode == 1 and "SIGKILL" in killed.stdout
    assert exit_status(app_process) == -signal.SIGKILL
    env["HEALTHCHECK_KILL_AFTER"] = "never"
    misconfigured = probe()
    assert misconfigured.returncode == 1 and "HEALTHCHECK_KILL_AFTER" in misconfigured.stdout


def test_unwritable_state_directory_does_not_break_a_healthy_probe(livez):
    url, _ = livez
    config = ProbeConfig(
        livez_url=url, timeout_seconds=0.5, kill_after=1, pid_file=Path("/nonexistent-probe-dir/app.pid")
    )
    code, message = run_probe(config)
    assert code == HEALTHY
    assert "cannot record probe state in /nonexistent-probe-dir" in message
