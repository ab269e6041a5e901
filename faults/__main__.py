"""`python -m faults [--quick] [--case NAME ...] [--report PATH]`: run the fault campaign and write its figures.

Exit code 0 when every case had zero lost, zero duplicated and all its checks true; 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from faults.cases import CASES, CaseResult, CaseSettings
from faults.processes import REPO_ROOT
from faults.report import write

DEFAULT_REPORT = REPO_ROOT / "docs" / "reliability.md"


def _print(result: CaseResult) -> None:
    t = result.tally
    recover = "-" if result.recover_seconds is None else f"{result.recover_seconds:.1f}s"
    failed = [label for label, held in result.checks.items() if not held]
    print(
        f"{'PASS' if result.passed else 'FAIL'} {result.name}: operations={t.operations} lost={t.lost} "
        f"duplicated={t.duplicated} recover={recover} run={result.duration_seconds:.0f}s"
        + (f" failed checks: {failed}" if failed else ""),
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the selected cases (all by default) one after the other; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m faults", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller bursts and shorter outages (CI)")
    parser.add_argument("--case", action="append", choices=sorted(CASES), help="run only this case (repeatable)")
    parser.add_argument("--report", type=Path, default=DEFAULT_REPORT, help="where to write the Markdown figures")
    parser.add_argument("--work-dir", type=Path, help="keep process logs here (default: a temporary directory)")
    args = parser.parse_args(argv)

    names = args.case or list(CASES)
    started = time.monotonic()
    results: list[CaseResult] = []
    with tempfile.TemporaryDirectory(prefix="faults-") as scratch:
        work_dir = args.work_dir or Path(scratch)
        for name in names:
            result = CASES[name](CaseSettings(work_dir=work_dir, quick=args.quick))
            _print(result)
            results.append(result)
    total = time.monotonic() - started
    write(args.report, results, quick=args.quick, total_seconds=total)
    print(f"{sum(r.passed for r in results)}/{len(results)} cases passed in {total:.0f} s; figures in {args.report}")
    return 0 if all(result.passed for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
