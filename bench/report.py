"""The benchmark's result table: one `Row` per figure, rendered as Markdown with the machine and the command."""

from __future__ import annotations

import datetime
import os
import platform
import sys
from dataclasses import dataclass, field


@dataclass
class Row:
    """One measured figure beside its baseline.

    `ratio` is value / baseline when both are numbers of the same kind (None otherwise); `met` is None when the
    issue sets no target for the figure, or when it could not be measured (then `value` says why).
    """

    section: str
    measurement: str
    value: str
    baseline: str = "-"
    ratio: float | None = None
    target: str = "-"
    met: bool | None = None


@dataclass
class Report:
    """Every row of one run plus free-text notes (skips, explanations, profiles)."""

    command: str
    quick: bool
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    started_at: datetime.datetime = field(default_factory=lambda: datetime.datetime.now(datetime.UTC))
    # Other work on the machine skews every figure (baselines included): the load average at the start says how much.
    load_at_start: float = field(default_factory=lambda: os.getloadavg()[0])

    def add(self, row: Row) -> None:
        """Record a row and print it at once, so a long run shows progress."""
        self.rows.append(row)
        print(
            f"  {row.measurement}: {row.value} (baseline {row.baseline}, {_ratio(row.ratio)}, {_met(row.met)})",
            flush=True,
        )

    def note(self, text: str) -> None:
        """Record a note (a skip, a gap explanation) and print it."""
        self.notes.append(text)
        print(f"  note: {text}", flush=True)

    def markdown(self) -> str:
        """The whole report: header with date, machine and command, the table, then the notes."""
        lines = [
            "# Performance",
            "",
            f"- date: {self.started_at:%Y-%m-%d %H:%M} UTC",
            f"- machine: {_machine()}; 1-minute load average at the start: {self.load_at_start:.2f}",
            f"- command: `{self.command}`" + (" (quick smoke run: short, noisy figures)" if self.quick else ""),
            "- every figure was measured beside its baseline in the same run; ratio = value / baseline",
            "",
            "| measurement | value | baseline | ratio | target | met? |",
            "|---|---|---|---|---|---|",
        ]
        order = {name: index for index, name in reversed(list(enumerate(row.section for row in self.rows)))}
        section = None
        for row in sorted(self.rows, key=lambda row: order[row.section]):  # stable: rows keep their run order
            if row.section != section:
                section = row.section
                lines.append(f"| **{section}** | | | | | |")
            lines.append(
                f"| {row.measurement} | {row.value} | {row.baseline} | {_ratio(row.ratio)} | "
                f"{row.target} | {_met(row.met)} |"
            )
        if self.notes:
            lines += ["", "## Notes", ""]
            lines += [f"- {note}" for note in self.notes]
        return "\n".join(lines) + "\n"


def _machine() -> str:
    """CPU count and model, kernel, Python and the HTTP server's versions."""
    from importlib.metadata import version
    from importlib.util import find_spec

    # uvicorn picks httptools and uvloop when installed (uvicorn[standard]); the image has neither.
    parser = "httptools" if find_spec("httptools") else "h11"
    loop = "uvloop" if find_spec("uvloop") else "asyncio"
    model = next((line.split(":", 1)[1].strip() for line in _cpuinfo() if line.startswith("model name")), "unknown")
    return (
        f"nproc {len(os.sched_getaffinity(0))} ({model}), {platform.system()} {platform.release()}, "
        f"Python {sys.version.split()[0]}, uvicorn {version('uvicorn')} ({parser}, {loop} loop), "
        f"fastapi {version('fastapi')}"
    )


def _cpuinfo() -> list[str]:
    try:
        with open("/proc/cpuinfo") as info:
            return info.read().splitlines()
    except OSError:
        return []


def _ratio(ratio: float | None) -> str:
    if ratio is None:
        return "-"
    return f"{ratio:.2f}" if ratio >= 0.1 else f"{ratio:.2g}"  # two significant digits for small ratios


def _met(met: bool | None) -> str:
    return {True: "yes", False: "**no**", None: "-"}[met]


def ms(seconds: float) -> str:
    """Seconds as milliseconds for the table."""
    return f"{seconds * 1000:.0f} ms" if seconds >= 0.1 else f"{seconds * 1000:.2f} ms"


def ratio(value: float, baseline: float) -> float | None:
    """value / baseline, or None when the baseline is zero."""
    return value / baseline if baseline else None
