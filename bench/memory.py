"""Memory: resident set size of the API process idle and after the load runs, beside the hello-world's."""

from __future__ import annotations

from pathlib import Path

from bench.report import Report, Row, ratio
from bench.services import ServerProcess

SECTION = "Memory (VmRSS from /proc/<pid>/status)"
IDLE_TARGET_MB = 100.0
AFTER_LOAD_TARGET_MB = 256.0


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """`VmRSS` (now) or `VmHWM` (peak) of a process, in MB (10^6 bytes)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024 / 1e6
    raise RuntimeError(f"/proc/{pid}/status has no {field}")


def report_idle(report: Report, api: ServerProcess, baseline: ServerProcess) -> None:
    """RSS of the ready, idle API beside the idle hello-world."""
    value, base = rss_mb(api.pid), rss_mb(baseline.pid)
    report.add(
        Row(
            SECTION,
            "API idle (ready, before any load)",
            f"{value:.1f} MB",
            f"{base:.1f} MB (hello-world)",
            ratio(value, base),
            f"< {IDLE_TARGET_MB:g} MB",
            value < IDLE_TARGET_MB,
        )
    )


def report_after_load(report: Report, api: ServerProcess, baseline: ServerProcess) -> None:
    """RSS now and at its peak, after every HTTP load run, beside the hello-world after its own load runs."""
    value, peak, base = rss_mb(api.pid), rss_mb(api.pid, "VmHWM"), rss_mb(baseline.pid)
    report.add(
        Row(
            SECTION,
            "API after the load runs (peak VmHWM in brackets)",
            f"{value:.1f} MB ({peak:.1f} MB)",
            f"{base:.1f} MB (hello-world)",
            ratio(value, base),
            f"< {AFTER_LOAD_TARGET_MB:g} MB",
            max(value, peak) < AFTER_LOAD_TARGET_MB,
        )
    )
