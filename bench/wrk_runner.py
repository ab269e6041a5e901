"""Drive `wrk` (Debian's package: a real load generator in its own process) and read its summary."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

WRK = "wrk"
_REPORT_SCRIPT = Path(__file__).with_name("wrk") / "report.lua"
_ROTATE_SCRIPT = Path(__file__).with_name("wrk") / "rotate.lua"
_MARKER = "BENCH_JSON "
# wrk's own request timeout; slower answers count as timeouts (reported, never hidden).
_REQUEST_TIMEOUT_SECONDS = 10


@dataclass(frozen=True)
class LoadResult:
    """What one wrk run measured."""

    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int  # socket errors, timeouts and non-2xx/3xx answers

    @property
    def rps(self) -> float:
        """Requests per second, errors included (they are flagged separately)."""
        return self.requests / self.seconds if self.seconds else 0.0

    def describe(self) -> str:
        """`12,345 req/s, p50 1.23 ms, p99 4.56 ms` (+ errors when any)."""
        text = f"{self.rps:,.0f} req/s, p50 {self.p50_ms:.2f} ms, p99 {self.p99_ms:.2f} ms"
        return text + (f", **{self.errors} errors**" if self.errors else "")


def available() -> bool:
    """Whether wrk is installed (`apt-get install -y wrk`)."""
    return shutil.which(WRK) is not None


def run_wrk(
    url: str, connections: int, seconds: float, headers: dict[str, str] | None = None, paths: list[str] | None = None
) -> LoadResult:
    """Load `url` with `connections` keep-alive connections from one wrk thread for `seconds`; with `paths`, the
    requests ask for those paths of `url` in turn.

    One thread: on 2 cores the server gets one core and the load generator the other.
    """
    script = _ROTATE_SCRIPT if paths else _REPORT_SCRIPT
    command = [
        WRK,
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        f"--timeout={_REQUEST_TIMEOUT_SECONDS}s",
        "-s",
        str(script),
    ]
    for name, value in (headers or {}).items():
        command += ["-H", f"{name}: {value}"]
    command.append(url)
    if paths:
        command += ["--", *paths]
    completed = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
        env={**os.environ, "BENCH_WRK_REPORT": str(_REPORT_SCRIPT)},
    )
    line = next((line for line in completed.stdout.splitlines() if line.startswith(_MARKER)), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary for {url}: {completed.stdout[-500:]} {completed.stderr[-500:]}")
    data = json.loads(line[len(_MARKER) :])
    errors = sum(data[key] for key in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts"))
    return LoadResult(data["requests"], data["duration_us"] / 1e6, data["p50_us"] / 1000, data["p99_us"] / 1000, errors)
