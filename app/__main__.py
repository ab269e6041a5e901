"""`python -m app`: validate the environment (one-line error, exit 2), then serve with uvicorn on HOST:PORT."""
from __future__ import annotations

import math
import sys

import uvicorn

from app.core.config import ConfigError, load_settings
from app.main import create_app


def main() -> int:
    """Run the API until SIGTERM/SIGINT; returns the process exit code."""
    try:
        settings = load_settings()
    except ConfigError as error:
        print(str(error), file=sys.stderr)
        return 2
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,  # our JSON logging, configured by create_app
        access_log=False,  # replaced by the app's own access log (with request id)
        lifespan="on",  # a failing start-up must exit non-zero, not be ignored
        # Shorter than Docker's stop grace period, so the lifespan drain always runs before SIGKILL.
        timeout_graceful_shutdown=math.ceil(settings.shutdown_grace_seconds),
        server_header=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
