"""Start-up: process start to /livez 200 and /readyz 200, against the hello-world's start to its first 200;
and the import time of the app, against an interpreter that imports only the baseline."""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
import time

from bench.report import Report, Row, ms, ratio
from bench.services import REPO_ROOT, Services

SECTION = "Start-up"
READY_TARGET_SECONDS = 2.0
_IMPORTTIME_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|\s*(\S+)")


def run(services: Services, report: Report, repeats: int) -> float:
    """Start the API and the baseline `repeats` times each and report the medians; returns the /readyz median."""
    livez, readyz, baseline = [], [], []
    for _ in range(repeats):
        hello = services.start_baseline()
        try:
            baseline.append(services.wait_ready(hello, "/"))
        finally:
            services.stop(hello)
        api = services.start_api()
        try:
            livez.append(services.wait_ready(api, "/livez"))
            readyz.append(services.wait_ready(api, "/readyz"))
        finally:
            services.stop(api)
    base = statistics.median(baseline)
    note = f" (median of {repeats})" if repeats > 1 else ""
    for name, samples, target in (("/livez", livez, None), ("/readyz", readyz, READY_TARGET_SECONDS)):
        value = statistics.median(samples)
        report.add(
            Row(
                SECTION,
                f"process start to {name} 200{note}",
                ms(value),
                f"{ms(base)} (hello-world first 200)",
                ratio(value, base),
                f"< {target:g} s" if target else "-",
                value < target if target else None,
            )
        )
    _import_time(report, repeats)
    return statistics.median(readyz)


def _import_time(report: Report, repeats: int) -> None:
    app_runs = [_timed_python("import app.main") for _ in range(repeats)]
    base_runs = [_timed_python("import bench.baseline") for _ in range(repeats)]
    value, base = statistics.median(app_runs), statistics.median(base_runs)
    report.add(
        Row(
            SECTION,
            "`python -c 'import app.main'` wall time",
            ms(value),
            f"{ms(base)} (`import bench.baseline`)",
            ratio(value, base),
        )
    )
    report.note("heaviest imports of app.main (`python -X importtime`, cumulative): " + _heaviest_imports())


def _timed_python(code: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True, timeout=60)
    return time.perf_counter() - started


def _heaviest_imports(count: int = 6) -> str:
    """The packages that cost most to import with the app (cumulative, so a package includes its own imports)."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import app.main"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    top_level: dict[str, int] = {}
    for line in result.stderr.splitlines():
        match = _IMPORTTIME_LINE.match(line)
        # A package's own line (no dot) carries its cumulative time, wherever it was first imported from.
        if match and "." not in match.group(3) and match.group(3) != "app":
            top_level[match.group(3)] = int(match.group(2))
    ranked = sorted(top_level.items(), key=lambda item: item[1], reverse=True)[:count]
    return ", ".join(f"{name} {micros / 1000:.0f} ms" for name, micros in ranked)
