"""The FastAPI app: `create_app()` wires settings, middleware, routers and job handlers; the lifespan runs the worker.

Run with `python -m app` (preferred: one-line config errors) or `uvicorn app.main:create_app --factory`.
Start-up serves `/livez` at once and connects to Valkey in the background; the job worker starts, and the app
becomes ready, when Valkey first answers. Shutdown (SIGTERM, handled by uvicorn) stops taking jobs, gives running
ones `SHUTDOWN_GRACE_SECONDS`, and leaves unfinished ones unacknowledged for another worker to reclaim.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware

from app import __version__
from app.access.auth import require_scope
from app.access.router import router as keys_router
from app.billing.router import budgets_router, costs_router
from app.compat.router import router as compat_router
from app.container import AppContainer
from app.core.config import ConfigError, Settings, load_settings
from app.core.errors import ServiceUnavailable, install_exception_handlers
from app.core.faults import router as faults_router
from app.core.logging import configure_logging
from app.core.middleware import BodySizeLimitMiddleware, RequestContextMiddleware
from app.core.openapi import install_openapi
from app.health.liveness import LIVEZ_OPERATION, LIVEZ_PATH, LivenessEndpoint
from app.health.router import router as health_router
from app.instances.router import router as instances_router
from app.jobs.router import router as jobs_router
from app.novita.errors import NovitaError
from app.novita.problems import novita_error_to_app_error
from app.products.router import router as products_router
from app.ui import install_dashboard

logger = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; without `settings` they are read from the environment, exiting with code 2 if invalid."""
    if settings is None:
        try:
            settings = load_settings()
        except ConfigError as error:
            print(str(error), file=sys.stderr)
            raise SystemExit(2) from None
    configure_logging(settings.log_level, settings.secret_values())
    container = AppContainer.build(settings)
    docs = settings.openapi_docs_enabled
    app = FastAPI(
        title="Novita GPU instance API",
        version=__version__,
        lifespan=_lifespan,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        # operationId = the route function's name (`get_instance`): what generated clients call their functions.
        generate_unique_id_function=lambda route: route.name,
    )
    app.state.container = container  # the lifespan and the server's drain read it
    app.state.services = container.services()
    install_exception_handlers(app, upstream={NovitaError: novita_error_to_app_error})
    install_openapi(app, extra_paths={LIVEZ_PATH: {"get": LIVEZ_OPERATION}})
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_request_body_bytes)
    if settings.cors_origins:  # no CORS headers at all unless origins are configured
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type", "Idempotency-Key", "X-Request-ID"],
            expose_headers=["Location", "Retry-After", "X-Request-ID"],
        )
    app.add_middleware(RequestContextMiddleware, metrics=container.metrics)  # sees every answer but /livez
    app.add_middleware(LivenessEndpoint, process=container.process)  # outermost: liveness depends on nothing
    routers = (
        health_router,
        jobs_router,
        instances_router,
        products_router,
        costs_router,
        budgets_router,
        compat_router,
        keys_router,
    )
    for router in routers:
        app.include_router(router)
    install_dashboard(app, container.redis.client, settings.ui_session_ttl_seconds)  # /ui, outside the OpenAPI schema
    if not settings.client_api_keys:
        logger.warning("API_KEYS is not set: the API is open to anyone who can reach it (development only)")
    if settings.fault_injection:
        logger.warning("FAULT_INJECTION is on: /debug endpoints are served")
        app.include_router(faults_router, dependencies=[Depends(require_scope("admin"))])
    container.register_job_handlers()
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    container: AppContainer = app.state.container
    settings = container.settings
    _write_pid_file(settings.pid_file)
    logger.info(
        "starting",
        extra={"version": __version__, "appEnv": settings.app_env, "valkeyTls": container.redis.uses_tls},
    )
    # Everything imported and wired so far lives as long as the process: out of the collector's generations, a full
    # collection (a sync of a large fleet triggers several) scans only what requests and jobs allocate, not ~90,000
    # objects of modules, models and routes, so the pause every request then waits behind is shorter.
    _prepare_routes(app)
    gc.freeze()
    readiness = asyncio.create_task(_become_ready(container), name="become-ready")
    try:
        yield
    finally:
        container.process.shutting_down = True
        logger.info("shutting down: draining the job worker")
        readiness.cancel()
        await asyncio.wait({readiness}, timeout=2.0)
        await container.automation.stop()
        await container.worker.stop(settings.shutdown_grace_seconds)
        await container.novita.aclose()
        await container.redis.close()
        _remove_pid_file(settings.pid_file)
        logger.info("stopped")


def _prepare_routes(app: FastAPI) -> None:
    """Have FastAPI build every route's request handling now. It builds each route's (its dependencies, parameter and
    response fields) on the first request that walks past it: about 30 ms for this app, paid by the first client after
    every start. Matching a path that no route takes walks them all; done before `gc.freeze()`, which then keeps
    that state out of the collections too."""
    scope = {"type": "http", "path": "/.prepare-routes", "method": "GET", "headers": [], "root_path": ""}
    for route in app.router.routes:
        route.matches(scope)


async def _become_ready(container: AppContainer) -> None:
    """Wait for Valkey and the list index, start the worker, then keep watching Valkey so health follows it.

    Nothing here grows with the fleet once the index exists: reconciliation with Novita runs in the background.
    """
    await container.redis.wait_until_connected()
    await _ensure_index(container)
    await container.worker.start()
    container.process.ready_once = True
    logger.info("ready", extra={"startupSeconds": round(container.process.uptime_seconds, 2)})
    await container.automation.start()
    await container.redis.monitor(container.settings.redis_monitor_interval_seconds)


async def _ensure_index(container: AppContainer) -> None:
    """Build the list index from records written before it existed (once per deployment; a no-op afterwards)."""
    while True:
        try:
            await container.instances.store.ensure_index()
        except ServiceUnavailable as error:
            logger.warning("cannot build the instance list index yet; retrying", extra={"error": str(error)})
            await asyncio.sleep(1.0)
            continue
        container.process.index_ready = True
        return


def _write_pid_file(path: Path) -> None:
    """The container probe kills this pid when the app is wedged; failing to write it must not stop the app."""
    try:
        path.write_text(f"{os.getpid()}\n")
    except OSError as error:
        logger.error(
            "cannot write the pid file; the container probe cannot restart a wedged app",
            extra={"path": str(path), "error": str(error)},
        )


def _remove_pid_file(path: Path) -> None:
    with suppress(OSError, ValueError):
        if int(path.read_text().strip()) == os.getpid():
            path.unlink()
