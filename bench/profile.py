"""Where the time goes: sample the API process with py-spy while wrk loads one endpoint, then summarise the
samples by the package of the frame that was running (self time) and by the package frames on the stack."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

from bench import wrk_runner
from bench.services import ServerProcess

_SAMPLE_RATE = 250
_THREADPOOL_PACKAGES = frozenset({"anyio", "threading", "queue"})
_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^:()]+)(?::\d+)?\)$")


def _py_spy() -> str | None:
    """py-spy from this interpreter's environment (it is a pip package), else from PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def available() -> bool:
    """Whether py-spy is installed (bench/requirements.txt)."""
    return _py_spy() is not None


def profile(
    api: ServerProcess, url: str, connections: int, seconds: float, headers: dict[str, str], out_dir: Path
) -> str:
    """Record `seconds` of samples under load; returns a Markdown paragraph summarising them."""
    raw = out_dir / f"profile-{api.pid}-{abs(hash(url))}.txt"
    command = [
        str(_py_spy()),
        "record",
        "--pid",
        str(api.pid),
        "--duration",
        str(max(1, round(seconds))),
        "--rate",
        str(_SAMPLE_RATE),
        "--format",
        "raw",
        "--output",
        str(raw),
        "--nonblocking",
        "--gil",
    ]  # only the thread holding the GIL: CPU time spent in Python, not idle threadpool workers
    recorder = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    load = threading.Thread(target=wrk_runner.run_wrk, args=(url, connections, seconds, headers))
    try:
        load.start()
        _, errors = recorder.communicate(timeout=seconds + 60)
    finally:
        load.join(timeout=seconds + 90)
        if recorder.poll() is None:
            recorder.kill()
            recorder.wait()
    if not raw.exists():
        return f"py-spy produced no profile ({errors.decode(errors='replace')[-300:]})"
    return _summarise(raw.read_text())


def _summarise(collapsed: str, top: int = 8) -> str:
    self_time: Counter[str] = Counter()
    functions: Counter[str] = Counter()
    threadpool = total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        packages = [_package(frame) for frame in frames]
        total += count
        self_time[packages[-1]] += count
        # FastAPI runs plain `def` dependencies in anyio's worker threads: the hand-off shows as these frames.
        if any(package in _THREADPOOL_PACKAGES for package in packages):
            threadpool += count
        functions[_function(frames[-1])] += count
    if not total:
        return "py-spy recorded no samples"

    def share(counter: Counter[str], count: int) -> str:
        return ", ".join(f"{name} {value / total:.0%}" for name, value in counter.most_common(count))

    return (
        f"{total} samples with the GIL held; self time by package: {share(self_time, top)}; "
        f"samples inside the anyio threadpool hand-off: {threadpool / total:.0%}; "
        f"hottest functions (self): {share(functions, 6)}"
    )


def _function(frame: str) -> str:
    """`Class.method (package/module.py)`: the frame without its line number."""
    match = _FRAME.match(frame.strip())
    return f"{match.group('function')} ({match.group('file')})" if match else frame.strip()


def _package(frame: str) -> str:
    """The package of a collapsed-stack frame, from py-spy's short file name: `app.<domain>`, `fastapi`, `asyncio`."""
    match = _FRAME.match(frame.strip())
    parts = (match.group("file") if match else frame).removesuffix(".py").split("/")
    if parts[0] == "app" and len(parts) > 1:
        return f"app.{parts[1]}"
    return parts[0]
