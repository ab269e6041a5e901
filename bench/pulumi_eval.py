"""The Pulumi program: time to evaluate the dev and prod stacks under mocks (`python -m tests.infra.render`),
beside an interpreter that only imports the Pulumi SDK and providers; and the same evaluation in-process, warm."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

from bench.report import Report, Row, ms, ratio
from bench.services import REPO_ROOT

SECTION = "Pulumi program under mocks"
STACKS = ("dev", "prod")
_IMPORT_ONLY = "import pulumi, pulumi_docker, pulumi_aiven"


def run(report: Report, repeats: int) -> None:
    """Time each stack's render `repeats` times as a subprocess and in-process; report medians."""
    base = statistics.median(_timed([sys.executable, "-c", _IMPORT_ONLY]) for _ in range(repeats))
    for stack in STACKS:
        value = statistics.median(_timed([sys.executable, "-m", "tests.infra.render", stack]) for _ in range(repeats))
        report.add(
            Row(
                SECTION,
                f"`python -m tests.infra.render {stack}` wall time",
                ms(value),
                f"{ms(base)} (`python -c '{_IMPORT_ONLY}'`)",
                ratio(value, base),
            )
        )
    from tests.infra.render import render  # the SDK's import cost is paid here, outside the timed renders

    render(STACKS[0], {}, {})  # the first render pays lazy imports; the figures below are warm
    for stack in STACKS:
        samples = []
        for _ in range(max(3, repeats)):
            started = time.perf_counter()
            render(stack, {}, {})
            samples.append(time.perf_counter() - started)
        report.add(
            Row(
                SECTION,
                f"in-process render of {stack}, warm (median of {len(samples)})",
                ms(statistics.median(samples)),
            )
        )


def _timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, cwd=REPO_ROOT, check=True, stdout=subprocess.DEVNULL, timeout=120)
    return time.perf_counter() - started
