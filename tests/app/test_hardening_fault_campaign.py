"""The fault campaign (`python -m faults --quick`) in CI: real redis-server, fake Novita and API processes; a kill -9
during a burst of 200 creates, a Valkey outage, Novita faults with the breaker opening and closing, three replicas
on one Valkey. Every case must end with zero lost and zero duplicated operations and all its checks true."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from faults.__main__ import main
from faults.cases import CASES, CaseResult
from faults.report import render
from faults.workload import new_operations, tally
from tests.fakes.fixtures import FakeNovitaHandle


# A hang guard, not a speed target: the quick campaign takes about 140 s alone on 2 cores and more on a busy machine.
@pytest.mark.timeout(400)
def test_quick_campaign_loses_and_duplicates_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "reliability.md"

    exit_code = main(["--quick", "--report", str(report), "--work-dir", str(tmp_path / "work")])

    printed = capsys.readouterr().out
    case_lines = [line for line in printed.splitlines() if line.startswith(("PASS ", "FAIL "))]
    assert len(case_lines) == len(CASES), printed
    for line in case_lines:
        assert " lost=0 " in line and " duplicated=0 " in line, line
    assert exit_code == 0, printed
    written = report.read_text()
    assert written.count("| 0 | 0 |") == len(CASES)  # lost and duplicated columns of every case row
    assert "FAIL" not in written


def _create_on_novita(novita: FakeNovitaHandle, name: str) -> None:
    response = httpx.post(
        novita.base_url + "/gpu/instance/create",
        headers={"Authorization": f"Bearer {novita.api_key}"},
        json={
            "name": name,
            "productId": "4090-us-ca-6",
            "gpuNum": 1,
            "rootfsSize": 60,
            "kind": "gpu",
            "imageUrl": "docker.io/library/ubuntu:22.04",
        },
    )
    assert response.status_code == 200, response.text


def test_the_tally_counts_what_went_wrong(novita: FakeNovitaHandle) -> None:
    """The campaign's verdict rests on this count: an unfinished operation is lost; a second instance for one
    operation, an instance of no operation, or two jobs for one idempotency key are duplicates."""
    done, unfinished, double_job = new_operations("tally", 3)
    for op, state in ((done, "succeeded"), (unfinished, "running"), (double_job, "succeeded")):
        op.final_state, op.job_id, op.upstream_name = state, f"job-{op.name}", f"{op.name}-0123456789abcdef"
        op.job_ids_seen = {op.job_id}
    double_job.job_ids_seen.add("another-job")
    _create_on_novita(novita, done.upstream_name or "")
    _create_on_novita(novita, done.upstream_name or "")  # created twice
    _create_on_novita(novita, "nobody-asked-for-this")

    counted = tally([done, unfinished, double_job], novita)

    assert (counted.operations, counted.succeeded, counted.lost) == (3, 2, 1)
    assert counted.duplicated == 3  # one extra instance, one orphan, one key with two jobs
    assert (counted.novita_instances, counted.novita_create_calls) == (3, 3)
    result = CaseResult("tally", "tally", "cmd", counted, None, "-", 1.0)
    assert not result.passed and "FAIL" in render([result], quick=True, total_seconds=1.0)
