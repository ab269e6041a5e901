"""`python -m bench [--quick] [--scale] [--output PATH]`: run every benchmark, print the table and write it as Markdown.

`--scale` runs only the fleet-scale benchmark (bench/scale.py: 1,000 and 10,000 managed instances; with `--quick`
1,000 and a short load) and writes its own section into the output file, keeping the rest of it.

Exit status: 0 when every section ran (slow figures and missed targets included: benchmarks are not tests);
1 when a section broke (its error is in the report); optional tools that are missing (wrk, saq, py-spy, a Docker
engine) only skip their rows with a note.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from bench import (
    container,
    edge_proxy,
    http_load,
    jobqueue,
    memory,
    profile,
    pulumi_eval,
    scale,
    startup,
    ui_pages,
    upstream,
    wrk_runner,
)
from bench.report import Report
from bench.services import FASTAPI_BASELINE_APP, REPO_ROOT, ServerProcess, Services

FULL_OUTPUT = REPO_ROOT / "docs" / "performance.md"
QUICK_OUTPUT = REPO_ROOT / "build" / "bench-quick.md"
QUICK_SCALE_OUTPUT = REPO_ROOT / "build" / "bench-scale-quick.md"
# A hand-written section of the output file that a new run keeps (it is dated by whoever writes it).
ANALYSIS_HEADING = "## Analysis"

T = TypeVar("T")


@dataclass(frozen=True)
class Plan:
    """How long and how often each benchmark runs."""

    startup_repeats: int
    queue_burst: int
    queue_paced: int
    concurrency_levels: tuple[int, ...]
    load_seconds: float
    upstream_seconds: float
    pulumi_repeats: int
    image_build_timeout_seconds: int
    profile_misses: bool
    ui_fleet: int
    ui_requests: int


FULL = Plan(
    startup_repeats=5,
    queue_burst=5000,
    queue_paced=300,
    concurrency_levels=(1, 16, 64),
    load_seconds=10,
    upstream_seconds=15,
    pulumi_repeats=3,
    image_build_timeout_seconds=600,
    profile_misses=True,
    ui_fleet=1000,
    ui_requests=30,
)
QUICK = Plan(
    startup_repeats=1,
    queue_burst=300,
    queue_paced=30,
    concurrency_levels=(1, 16, 64),
    load_seconds=1,
    upstream_seconds=2,
    pulumi_repeats=1,
    image_build_timeout_seconds=180,
    profile_misses=False,
    ui_fleet=100,
    ui_requests=3,
)


class Sections:
    """Runs each section, turning an exception into a report note so the other sections still run."""

    def __init__(self, report: Report) -> None:
        self.report = report
        self.failed: list[str] = []

    def run(self, name: str, action: Callable[[], T]) -> T | None:
        print(f"\n== {name}", flush=True)
        started = time.monotonic()
        try:
            result = action()
        except Exception as error:  # one broken section is reported; the others still run
            traceback.print_exc()
            self.failed.append(name)
            self.report.note(f"section '{name}' broke: {type(error).__name__}: {str(error)[:300]}")
            return None
        print(f"   ({time.monotonic() - started:.0f} s)", flush=True)
        return result


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks; see the module docstring for the exit status."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds per benchmark (CI smoke run)")
    parser.add_argument("--scale", action="store_true", help="only the fleet-scale benchmark (issue 15)")
    parser.add_argument(
        "--output",
        type=Path,
        help=f"Markdown file (default {FULL_OUTPUT.relative_to(REPO_ROOT)}, "
        f"or {QUICK_OUTPUT.relative_to(REPO_ROOT)} with --quick)",
    )
    args = parser.parse_args(argv)
    if args.scale:
        return _scale(args.quick, args.output, argv)
    plan = QUICK if args.quick else FULL
    output: Path = args.output or (QUICK_OUTPUT if args.quick else FULL_OUTPUT)
    command = shlex.join(["python", "-m", "bench", *(argv if argv is not None else sys.argv[1:])])
    report = Report(command=command, quick=args.quick)
    sections = Sections(report)

    with tempfile.TemporaryDirectory(prefix="bench-") as work_dir:
        with Services(Path(work_dir)) as services:
            ready = sections.run("start-up", lambda: startup.run(services, report, plan.startup_repeats))
            sections.run("job queue", lambda: jobqueue.run(services, report, plan.queue_burst, plan.queue_paced))
            sections.run("HTTP, upstream calls, memory", lambda: _serve_and_load(services, report, plan, work_dir))
            sections.run("dashboard pages", lambda: ui_pages.measure(services, report, plan.ui_fleet, plan.ui_requests))
            sections.run("container", lambda: container.run(services, report, ready, plan.image_build_timeout_seconds))
        sections.run("edge proxy", lambda: edge_proxy.run(report, plan.load_seconds, plan.image_build_timeout_seconds))
        sections.run("Pulumi program", lambda: pulumi_eval.run(report, plan.pulumi_repeats))

    _write(report, output)
    print(f"\n{report.markdown()}\nwritten to {output}")
    if sections.failed:
        print(f"sections that broke: {', '.join(sections.failed)}", file=sys.stderr)
        return 1
    return 0


def _scale(quick: bool, output: Path | None, argv: list[str] | None) -> int:
    """The fleet-scale section alone, written between its markers in `output`."""
    output = output or (QUICK_SCALE_OUTPUT if quick else FULL_OUTPUT)
    command = shlex.join(["python", "-m", "bench", *(argv if argv is not None else sys.argv[1:])])
    report = Report(command=command, quick=quick)
    sections = Sections(report)
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as work_dir, Services(Path(work_dir)) as services:
        sections.run(
            "fleet scale", lambda: scale.run(services, report, scale.QUICK_SCALE if quick else scale.FULL_SCALE)
        )
    scale.write_section(report, output)
    print(f"\n{report.markdown()}\nwritten to {output}")
    return 1 if sections.failed else 0


def _serve_and_load(services: Services, report: Report, plan: Plan, work_dir: str) -> None:
    """One API process and the hello-worlds, idle then under every load run; profile the targets missed."""
    api, baseline = services.start_api(), services.start_baseline()
    framework = services.start_baseline("fastapi-baseline", FASTAPI_BASELINE_APP)
    try:
        services.wait_ready(api, "/readyz")
        services.wait_ready(baseline, "/")
        services.wait_ready(framework, "/")
        time.sleep(1.0)  # let start-up work settle before reading the idle RSS
        memory.report_idle(report, api, baseline)
        if not wrk_runner.available():
            report.note("HTTP and upstream rows skipped: wrk is not installed (`apt-get install -y wrk`)")
            return
        instance_id = http_load.create_instance(services, api)
        missed = http_load.run(
            services, report, api, baseline, framework, instance_id, plan.concurrency_levels, plan.load_seconds
        )
        upstream.run(services, report, api, instance_id, plan.upstream_seconds)
        memory.report_after_load(report, api, baseline)
        if plan.profile_misses and missed:
            _profile(services, report, api, missed, plan.load_seconds, Path(work_dir))
    finally:
        for server in (api, baseline, framework):
            services.stop(server)


def _profile(
    services: Services,
    report: Report,
    api: ServerProcess,
    missed: list[tuple[http_load.Endpoint, int]],
    seconds: float,
    out_dir: Path,
) -> None:
    """Profile each endpoint that missed its target, at the lowest concurrency where it missed."""
    if not profile.available():
        report.note("targets were missed but py-spy is not installed (`pip install -r bench/requirements.txt`)")
        return
    first_miss: dict[str, tuple[http_load.Endpoint, int]] = {}
    for endpoint, level in missed:
        first_miss.setdefault(endpoint.path, (endpoint, level))
    for endpoint, level in first_miss.values():
        summary = profile.profile(
            api, f"{api.url}{endpoint.path}", level, seconds, http_load.auth_headers(services), out_dir
        )
        report.note(f"py-spy profile of {endpoint.label} at {http_load.describe_connections(level)}: {summary}")


def _write(report: Report, output: Path) -> None:
    """Write the report, keeping a hand-written analysis section of the previous file."""
    analysis = ""
    if output.exists():
        previous = output.read_text()
        if ANALYSIS_HEADING in previous:
            analysis = "\n" + previous[previous.index(ANALYSIS_HEADING) :]
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(report.markdown() + analysis)


if __name__ == "__main__":
    sys.exit(main())
