"""`docs/reliability.md`: the figures of the last campaign run, and the commands that reproduce every check."""

from __future__ import annotations

import platform
import time
from pathlib import Path

from faults.cases import CaseResult

_HEADER = """# Reliability: what the service survives, in figures

Written by `python -m faults` (the fault campaign, `faults/`) from its last run; do not edit by hand.
Every case starts real processes on 127.0.0.1 (a redis-server standing in for Valkey, the fake Novita server
`python -m tests.fakes.novita`, and the API as `python -m app` configured by environment variables like the container),
sends instance creates through the HTTP API as a client would (retrying with the same `Idempotency-Key` until a
202), breaks something, and counts:

- **operations**: creates the client sent; **lost**: operations that did not complete (job not `succeeded`), whether
  accepted before the fault or sent during it; **duplicated**: instances on Novita beyond one per operation,
  instances belonging to no operation, or one idempotency key answered with two jobs;
- **time to recover**: what the column names per case; **run time**: the whole case, start-up included.

Timings are shortened through the documented settings (`faults/processes.py: FAST_API_ENV`: visibility timeout 5 s,
job retries 0.2-2 s, instance poll 0.3 s, breaker reset 2 s); production uses longer ones, so production recovery is
slower by the same factors, not different in kind.
"""

_OTHER_CHECKS = """
## Other hardening checks (pytest, real HTTP, real redis-server)

| check | what it asserts | command |
|---|---|---|
| schema fuzzing | schemathesis generates valid and invalid requests for every operation of `/openapi.json` (50 per operation and mode, derandomized), sent with a valid key to a live app: no 5xx, documented status codes, content types, bodies and headers, and a 4xx for every schema-breaking request | `.venv/bin/pytest tests/app/test_fuzz_openapi.py` (deeper: `FUZZ_MAX_EXAMPLES=500 FUZZ_SEED=random`) |
| secrets | known values (Novita key, Valkey password in a TLS `rediss://` URL, two client keys, a secret instance env value) through success and error paths (bad/misplaced keys, Novita errors echoing the key, timeouts, validation errors, Valkey down): none in any log line, response body or header, `/health`, `/readyz`, `/metrics` | `.venv/bin/pytest tests/app/test_hardening_secrets.py` |
| access | per-key rate limit in Valkey (429 + Retry-After, shared by replicas, fails open and fast when Valkey is down), CORS only when `CORS_ALLOW_ORIGINS` is set | `.venv/bin/pytest tests/app/test_hardening_access.py` |
| Valkey ACL user | the API's whole lifecycle (create, replay, stop/start/restart/delete, catalogue, jobs, health, rate limit) runs as a redis-server user with exactly the rules of the Pulumi `valkeyAppUser` (`~ngpu:*`, the listed commands), with no denial in Valkey's ACL LOG; the same user is refused other keys and admin commands | `.venv/bin/pytest tests/app/test_hardening_valkey_acl.py` |
| campaign in CI | this campaign in `--quick` mode: zero lost, zero duplicated, every check true | `.venv/bin/pytest tests/app/test_hardening_fault_campaign.py` |
"""


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def render(results: list[CaseResult], *, quick: bool, total_seconds: float) -> str:
    """The whole document."""
    mode = "quick (`--quick`)" if quick else "full"
    lines = [
        _HEADER,
        f"## Last run\n\n{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {mode} mode, "
        f"{platform.system()} {platform.machine()}, Python {platform.python_version()}, "
        f"total {total_seconds:.0f} s. Reproduce everything: `.venv/bin/python -m faults`"
        f"{' --quick' if quick else ''}.\n",
        "| case | operations | lost | duplicated | time to recover | run time | checks | command |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        t = result.tally
        checks = "all pass" if all(result.checks.values()) else "FAILED"
        lines.append(
            f"| {result.title} | {t.operations} | {t.lost} | {t.duplicated} | "
            f"{_seconds(result.recover_seconds)} ({result.recovery}) | {result.duration_seconds:.0f} s | "
            f"{checks} | `{result.command}` |"
        )
    lines.append("\n## Details\n")
    for result in results:
        t = result.tally
        lines.append(f"### {result.name}: {'PASS' if result.passed else 'FAIL'}\n")
        lines.append(f"{result.title}.\n")
        lines.append(
            f"- accepted {t.accepted}/{t.operations}, succeeded {t.succeeded}, HTTP attempts by the client "
            f"{t.http_attempts}; on Novita: {t.novita_instances} instances from {t.novita_create_calls} "
            f"create calls"
        )
        for label, value in result.figures.items():
            lines.append(f"- {label}: {value}")
        for label, held in result.checks.items():
            lines.append(f"- [{'x' if held else ' '}] {label}")
        lines.append("")
    lines.append(_OTHER_CHECKS)
    return "\n".join(lines)


def write(path: Path, results: list[CaseResult], *, quick: bool, total_seconds: float) -> None:
    """Write the document to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(results, quick=quick, total_seconds=total_seconds))
