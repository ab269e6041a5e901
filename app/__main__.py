"""`python -m app`: validate the environment (one-line error, exit 2), then serve with uvicorn on HOST:PORT."""

from __future__ import annotations

import math
import sys
import threading
from types import FrameType

import uvicorn

from app.core.config import ConfigError, load_settings
from app.core.process import ProcessState
from app.main import create_app

# uvicorn's exit code when the app's start-up fails.
STARTUP_FAILURE = 3


class DrainingServer(uvicorn.Server):
    """On the first SIGTERM/SIGINT, report not ready (`/readyz` 503 "shutting down") and keep serving for
    `drain_seconds` before uvicorn's own shutdown (listener closed, in-flight requests finished, lifespan drain).
    A second signal shuts down at once."""

    def __init__(self, config: uvicorn.Config, process: ProcessState, drain_seconds: float) -> None:
        super().__init__(config)
        self._process = process
        self._drain_seconds = drain_seconds

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain_seconds <= 0 or self._process.shutting_down:
            super().handle_exit(sig, frame)
            return
        self._process.shutting_down = True
        timer = threading.Timer(self._drain_seconds, super().handle_exit, (sig, frame))
        timer.daemon = True
        timer.start()


def main() -> int:
    """Run the API until SIGTERM/SIGINT; returns the process exit code."""
    try:
        settings = load_settings()
    except ConfigError as error:
        print(str(error), file=sys.stderr)
        return 2
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,  # our JSON logging, configured by create_app
        access_log=False,  # replaced by the app's own access log (with request id)
        lifespan="on",  # a failing start-up must exit non-zero, not be ignored
        # Shorter than Docker's stop grace period, so the lifespan drain always runs before SIGKILL.
        timeout_graceful_shutdown=math.ceil(settings.shutdown_grace_seconds),
        server_header=False,
    )
    server = DrainingServer(config, app.state.container.process, settings.shutdown_drain_seconds)
    server.run()
    return 0 if server.started else STARTUP_FAILURE


if __name__ == "__main__":
    sys.exit(main())
