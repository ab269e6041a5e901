"""Routes of the dashboard: thin like the API's, calling the same services (never Novita directly).

Every page but sign-in needs a session; every POST needs the session's CSRF token. Errors become HTML pages with the
status the API would answer (`DashboardRoute`), never a stack trace. `Server-Timing` gives each page's server time.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, cast
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.access.auth import admit, check_scope
from app.access.keys import KeyRing, StoredKey
from app.access.schemas import KeyView
from app.billing.budgets import NO_TEAM, BudgetExceeded, BudgetService
from app.billing.costs import CostService
from app.billing.router import TEAM_PATTERN, caller_team
from app.core.deps import Services, services_of
from app.core.errors import AppError, Conflict, NotFound, ServiceUnavailable, ValidationFailed
from app.fleet.actions import Action
from app.fleet.schemas import InstanceState, InstanceView
from app.fleet.store import InstanceStore
from app.instances.service import ACTION_ALLOWED_FROM, InstanceService
from app.jobs.queue import CANCELLABLE_STATES, FAILED_JOBS_KEPT, Job, JobQueue
from app.jobs.router import JobView, job_visible, visible_job
from app.jobs.service import JobControl
from app.novita.errors import NovitaError
from app.novita.problems import novita_error_to_app_error
from app.products.service import ProductService, ProductView
from app.ui import views
from app.ui.forms import (
    GENERAL,
    FormState,
    parse_budget_form,
    parse_cost_range,
    parse_create_form,
    parse_key_form,
    read_form,
)
from app.ui.sessions import SESSION_COOKIE, SIGN_IN_CSRF_COOKIE, SessionStore, UiSession, tokens_match
from app.ui.spend import BudgetRow, cost_page

STATIC_DIR = Path(__file__).parent / "static"
FRAGMENT_HEADER = "x-dashboard-fragment"  # sent by dashboard.js when it polls a fragment
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_JOB_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_KEY_ID = re.compile(r"^[0-9a-f]{16}$")  # as `DELETE /api/keys/{keyId}` takes it
_KEY_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
DONE_MESSAGES = {
    "create": "Create requested",
    "start": "Start requested",
    "stop": "Stop requested",
    "restart": "Restart requested",
    "delete": "Delete requested",
    "heartbeat": "Heartbeat recorded: the idle auto-stop clock starts again",
    "cancel": "Job cancelled: it will not run",
    "requeue": "Job requeued: it runs again with a fresh attempt budget",
    "budget": "Budget saved",
    "revoke": "Key revoked: it is refused from the next request on",
}
JOBS_LISTED = FAILED_JOBS_KEPT  # per list of the jobs page: running, failed, dead letters
INSTANCE_JOBS_SHOWN = 25  # the API's `GET /api/instances/{id}/jobs` gives up to the 100 the queue keeps
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
templates.env.globals.update(
    when=views.when,
    duration=views.duration,
    usd=views.usd,
    money=views.money,
    job_tone=views.job_tone,
    cancellable_states=CANCELLABLE_STATES,
    states=list(InstanceState),
    sort_keys=views.SORT_KEYS,
    page_sizes=views.PAGE_SIZES,
)


class SignInRequired(Exception):
    """No valid session: a page goes to sign-in, a polled fragment answers 401 so the page reloads."""


class CsrfRejected(Exception):
    """A form came without this session's CSRF token."""


class DashboardRoute(APIRoute):
    """Renders every failure of a dashboard route as an HTML page and adds the security and timing headers."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def dashboard_handler(request: Request) -> Response:
            started = time.perf_counter()
            try:
                response = await handle(request)
            except SignInRequired:
                response = (
                    Response(status_code=401)
                    if FRAGMENT_HEADER in request.headers
                    else RedirectResponse("/ui/login", status_code=303)
                )
            except CsrfRejected:
                response = _error_page(
                    request,
                    403,
                    "The form was refused: it did not carry this session's "
                    "security token. Reload the page and try again.",
                )
            except RequestValidationError as error:
                fields = ", ".join(str(item["loc"][-1]) for item in error.errors())
                response = _error_page(request, 422, f"Invalid value for: {fields}.")
            except AppError as error:
                response = _error_page(request, error.status, error.detail, error.headers())
            except NovitaError as error:
                mapped = novita_error_to_app_error(error)
                response = _error_page(request, mapped.status, mapped.detail, mapped.headers())
            except (RedisConnectionError, RedisTimeoutError):
                unavailable = ServiceUnavailable("Valkey (state store) is unavailable; retry later")
                response = _error_page(request, unavailable.status, unavailable.detail, unavailable.headers())
            response.headers.update(_SECURITY_HEADERS)
            response.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - started) * 1000:.1f}"
            return response

        return dashboard_handler


router = APIRouter(prefix="/ui", include_in_schema=False, route_class=DashboardRoute)


def _services(request: Request) -> Services:
    return cast(Services, services_of(request.app))


def _sessions(request: Request) -> SessionStore:
    sessions: SessionStore = request.app.state.ui_sessions
    return sessions


async def current_session(request: Request) -> UiSession:
    """The signed-in session, acting as its key's principal now exactly like the API does (identity in the log,
    rate limit, team, scope); a revoked key has no session any more."""
    stored = await _sessions(request).get(request.cookies.get(SESSION_COOKIE))
    principal = await _services(request).get(KeyRing).principal_of(stored.key_digest) if stored else None
    if stored is None or principal is None:
        raise SignInRequired
    await admit(request, principal)
    return UiSession(principal=principal, csrf_token=stored.csrf_token)


Session = Annotated[UiSession, Depends(current_session)]


async def checked_form(request: Request, session: Session) -> dict[str, str]:
    """The posted form, once its CSRF token matched the session's."""
    form = await read_form(request)
    if not tokens_match(session.csrf_token, form.get("csrf_token")):
        raise CsrfRejected
    return form


Form = Annotated[dict[str, str], Depends(checked_form)]


async def operate_form(session: Session, form: Form) -> dict[str, str]:
    """A checked form that changes instances: the session's key must hold `operate` (a read key's forged POST is a
    403)."""
    check_scope(session.principal, "operate")
    return form


OperateForm = Annotated[dict[str, str], Depends(operate_form)]


def _render(request: Request, template: str, status_code: int = 200, **context: Any) -> Response:
    return templates.TemplateResponse(request, template, context, status_code=status_code)


def _error_page(request: Request, status: int, detail: str, headers: dict[str, str] | None = None) -> Response:
    response = _render(request, "error.html", status, status=status, detail=detail)
    response.headers.update(headers or {})
    return response


def _is_https(request: Request) -> bool:
    """Behind a TLS-terminating proxy the scheme arrives in X-Forwarded-Proto."""
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return request.url.scheme == "https" or forwarded == "https"


def _set_cookie(request: Request, response: Response, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name, value, max_age=max_age, path="/ui", httponly=True, samesite="strict", secure=_is_https(request)
    )


def _redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


# -- sign-in -----------------------------------------------------------------------------------------------------


@router.get("")
async def home() -> Response:
    """The instances list is the dashboard's home."""
    return _redirect("/ui/instances")


@router.get("/login")
async def sign_in_page(request: Request, signed_out: bool = False) -> Response:
    """The sign-in form, with a CSRF token of its own (there is no session yet)."""
    if await _sessions(request).get(request.cookies.get(SESSION_COOKIE)) is not None:
        return _redirect("/ui/instances")
    return _sign_in_form(request, 200, notice="You are signed out." if signed_out else None)


def _sign_in_form(request: Request, status: int, *, error: str | None = None, notice: str | None = None) -> Response:
    token = secrets.token_urlsafe(32)
    open_access = _services(request).get(KeyRing).is_open
    response = _render(
        request, "login.html", status, csrf_token=token, error=error, notice=notice, open_access=open_access
    )
    _set_cookie(request, response, SIGN_IN_CSRF_COOKIE, token, max_age=3600)
    return response


@router.post("/login")
async def sign_in(request: Request) -> Response:
    """Exchange an API key for a session cookie; the key itself goes nowhere else."""
    form = await read_form(request)
    if not tokens_match(request.cookies.get(SIGN_IN_CSRF_COOKIE, ""), form.get("csrf_token")):
        raise CsrfRejected
    keys = _services(request).get(KeyRing)
    presented = form.get("api_key", "").strip()
    digest = keys.digest(presented) if presented else ""
    if await keys.principal_of(digest) is None:
        return _sign_in_form(request, 401, error="That API key is not valid.")
    token = await _sessions(request).open(digest)
    response = _redirect("/ui/instances")
    _set_cookie(request, response, SESSION_COOKIE, token, max_age=_sessions(request).ttl_seconds)
    response.delete_cookie(SIGN_IN_CSRF_COOKIE, path="/ui")
    return response


@router.post("/logout")
async def sign_out(request: Request, _form: Form) -> Response:
    """End the session in Valkey and in the browser."""
    await _sessions(request).close(request.cookies.get(SESSION_COOKIE))
    response = _redirect("/ui/login?signed_out=true")
    response.delete_cookie(SESSION_COOKIE, path="/ui")
    return response


# -- instances ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ListingQuery:
    """The list page's filters, sort and page, checked like the API checks its query."""

    state: InstanceState | None
    name: str
    sort: views.SortKey
    page: int
    page_size: int

    @classmethod
    def of(cls, status: str, name: str, sort: str, page: int, page_size: int) -> ListingQuery:
        """The query, or a 422 naming the parameter that is wrong."""
        if status and status not in {state.value for state in InstanceState}:
            raise ValidationFailed(f"unknown status {status!r}", field="query.status")
        if sort not in views.SORT_KEYS:
            raise ValidationFailed(f"sort must be one of {', '.join(views.SORT_KEYS)}", field="query.sort")
        if page_size not in views.PAGE_SIZES:
            raise ValidationFailed("pageSize must be one of 10, 25, 50, 100", field="query.pageSize")
        if page < 1:
            raise ValidationFailed("page must be 1 or more", field="query.page")
        if len(name) > 255:
            raise ValidationFailed("name must be at most 255 characters", field="query.name")
        state = InstanceState(status) if status else None
        return cls(state, name.strip(), sort, page, page_size)  # sort checked above

    def link(self, **changes: Any) -> str:
        """This query with some values changed, as a URL query string."""
        values = {
            "status": self.state.value if self.state else "",
            "name": self.name,
            "sort": self.sort,
            "page": self.page,
            "pageSize": self.page_size,
            **changes,
        }
        return "?" + urlencode({key: value for key, value in values.items() if value not in ("", None)})


async def _products_by_id(services: Services) -> dict[str, ProductView]:
    """The catalogue (cached like `GET /api/products`) by product id; empty when Novita cannot be reached: the
    pages then show no prices rather than fail."""
    try:
        return {product.id: product for product in await services.get(ProductService).list_products()}
    except NovitaError:
        return {}


async def _listing(services: Services, session: UiSession, query: ListingQuery) -> dict[str, Any]:
    service = services.get(InstanceService)
    products = await _products_by_id(services)
    beyond_window: int | None = None  # the filter's total, when the order covered only its newest SORT_WINDOW
    if query.sort in ("newest", "name"):  # orders of the index itself: the service reads only the page
        page = await service.list_instances(
            session.principal,
            state=query.state,
            name=query.name or None,
            page=query.page,
            page_size=query.page_size,
            order="name" if query.sort == "name" else "newest",
        )
        page_rows, total, synced = views.rows(page.items, products), page.total, page.novita_synced
    else:  # price, GPU and state come from the catalogue or the records: sort the newest SORT_WINDOW here
        window = await service.list_instances(
            session.principal, state=query.state, name=query.name or None, page=1, page_size=views.SORT_WINDOW
        )
        ordered = views.sort_rows(views.rows(window.items, products), query.sort)
        start = (query.page - 1) * query.page_size
        page_rows, total, synced = ordered[start : start + query.page_size], len(ordered), window.novita_synced
        beyond_window = window.total if window.total > len(ordered) else None
    return {
        "rows": page_rows,
        "pager": views.Pager(query.page, query.page_size, total),
        "synced": synced,
        "query": query,
        "beyond_window": beyond_window,
    }


def listing_query(
    status: str = "",
    name: str = "",
    sort: str = "newest",
    page: int = 1,
    page_size: Annotated[int, Query(alias="pageSize")] = views.DEFAULT_PAGE_SIZE,
) -> ListingQuery:
    """FastAPI dependency: the list page's query (`pageSize` spelt as in the API)."""
    return ListingQuery.of(status, name, sort, page, page_size)


Listing = Annotated[ListingQuery, Depends(listing_query)]


@router.get("/instances")
async def instances_page(request: Request, session: Session, query: Listing) -> Response:
    """The instances the key sees, filtered, sorted and paged; the rows refresh themselves."""
    listing = await _listing(_services(request), session, query)
    return _render(request, "instances.html", session=session, **listing)


@router.get("/instances/rows")
async def instance_rows(request: Request, session: Session, query: Listing) -> Response:
    """The list's rows alone, for polling."""
    listing = await _listing(_services(request), session, query)
    return _render(request, "_instance_rows.html", session=session, **listing)


@router.get("/instances/new")
async def create_page(request: Request, session: Session) -> Response:
    """The create form (for keys that may create)."""
    check_scope(session.principal, "operate")
    return await _create_form(
        request, session, FormState(values={"gpuNum": "1", "rootfsSize": "60", "billingMode": "onDemand"})
    )


async def _create_form(request: Request, session: UiSession, form: FormState, status: int = 200) -> Response:
    products = sorted(
        (await _products_by_id(_services(request))).values(),
        key=lambda product: (not product.available, product.name, product.regions),
    )
    return _render(
        request,
        "create.html",
        status,
        session=session,
        form=form,
        products=products,
        idempotency_key="ui-" + secrets.token_hex(16),
    )


@router.post("/instances")
async def create_instance(request: Request, session: Session, form: OperateForm) -> Response:
    """Validate with the API's own model; errors go beside their fields, a valid form is queued like the API does."""
    create, shown = parse_create_form(form)
    if create is None:
        return await _create_form(request, session, shown, status=422)
    idempotency_key = form.get("idempotencyKey") or None
    try:
        accepted = await _services(request).get(InstanceService).create(create, idempotency_key, session.principal)
    except ValidationFailed as error:
        shown.add_error(GENERAL, error.detail)
        return await _create_form(request, session, shown, status=422)
    except BudgetExceeded as error:  # the API's 409, with its message: which limit, and the current figure
        shown.add_error(GENERAL, error.detail)
        return await _create_form(request, session, shown, status=error.status)
    return _redirect(f"/ui/instances/{accepted.instance.id}?done=create&job={accepted.job_id}")


def _checked_id(instance_id: str) -> str:
    if not _ID.match(instance_id):
        raise ValidationFailed("an instance id is 1-64 letters, digits, '_' or '-'", field="path.instanceId")
    return instance_id


async def _instance_context(services: Services, session: UiSession, instance_id: str) -> dict[str, Any]:
    instances = services.get(InstanceService)
    view: InstanceView = await instances.get(_checked_id(instance_id), session.principal)
    jobs = await instances.jobs(view.id or instance_id, INSTANCE_JOBS_SHOWN, session.principal)
    products = await _products_by_id(services)
    operate = session.allows("operate")  # a read key is shown no action at all
    allowed = [action for action in ("start", "stop", "restart") if view.state in ACTION_ALLOWED_FROM[action]]
    return {
        "row": views.rows([view], products)[0],
        "jobs": [JobView.of(job) for job in jobs],
        "max_jobs": INSTANCE_JOBS_SHOWN,
        "actions": allowed if operate else [],
        "can_delete": operate and view.state in ACTION_ALLOWED_FROM["delete"],
        "can_heartbeat": operate and view.state not in (InstanceState.DELETING, InstanceState.DELETED),
        "read_only": not operate,
    }


@router.get("/instances/{instance_id}")
async def instance_page(
    request: Request, session: Session, instance_id: str, done: str = "", job: str = ""
) -> Response:
    """One instance: state, connection, events, its jobs, actions; the panel refreshes itself."""
    context = await _instance_context(_services(request), session, instance_id)
    message = DONE_MESSAGES.get(done)
    if message and _JOB_ID.match(job):
        message = f"{message} (job {job})."
    return _render(request, "instance.html", session=session, done=message, **context)


@router.get("/instances/{instance_id}/panel")
async def instance_panel(request: Request, session: Session, instance_id: str) -> Response:
    """The instance's live part alone, for polling."""
    context = await _instance_context(_services(request), session, instance_id)
    return _render(request, "_instance_panel.html", session=session, **context)


@router.get("/instances/{instance_id}/delete")
async def confirm_delete_page(request: Request, session: Session, instance_id: str) -> Response:
    """Ask before deleting, naming the instance."""
    check_scope(session.principal, "operate")
    view = await _services(request).get(InstanceService).get(_checked_id(instance_id), session.principal)
    return _render(request, "confirm_delete.html", session=session, view=view)


async def _act(request: Request, session: UiSession, instance_id: str, action: Action) -> Response:
    services = _services(request)
    try:
        accepted = await services.get(InstanceService).request_action(
            _checked_id(instance_id), action, session.principal
        )
    except AppError as error:
        if error.status != 409:
            raise
        context = await _instance_context(services, session, instance_id)
        return _render(request, "instance.html", 409, session=session, error=error.detail, **context)
    return _redirect(f"/ui/instances/{instance_id}?done={action}&job={accepted.job_id}")


@router.post("/instances/{instance_id}/delete")
async def delete_instance(request: Request, session: Session, _form: OperateForm, instance_id: str) -> Response:
    """Queue the deletion (after the confirmation page)."""
    return await _act(request, session, instance_id, "delete")


@router.post("/instances/{instance_id}/heartbeat")
async def heartbeat(request: Request, session: Session, _form: OperateForm, instance_id: str) -> Response:
    """Say the instance is in use."""
    await _services(request).get(InstanceService).heartbeat(_checked_id(instance_id), session.principal)
    return _redirect(f"/ui/instances/{instance_id}?done=heartbeat")


@router.post("/instances/{instance_id}/{action}")
async def instance_action(
    request: Request, session: Session, _form: OperateForm, instance_id: str, action: str
) -> Response:
    """Queue a start, stop or restart."""
    if action not in ("start", "stop", "restart"):
        raise ValidationFailed("the action must be start, stop or restart", field="path.action")
    return await _act(request, session, instance_id, action)  # type: ignore[arg-type]


# -- jobs --------------------------------------------------------------------------------------------------------


def _checked_job_id(job_id: str, field: str) -> str:
    if not _JOB_ID.match(job_id):
        raise ValidationFailed("a job id is 1-128 letters, digits or . _ : -", field=field)
    return job_id


async def _jobs_context(services: Services, session: UiSession, job_id: str) -> dict[str, Any]:
    """The job asked for by id (if any), and the running jobs, the failed ones and the dead letters the session's
    principal sees: what the jobs page shows and refreshes. Another team's job reads as one that does not exist."""
    queue, records = services.get(JobQueue), services.get(InstanceStore)
    job, missing = None, False
    if job_id:
        found = await queue.get(_checked_job_id(job_id, "query.id"))
        if found is not None and not await job_visible(found, records, session.principal):
            found = None
        job, missing = (JobView.of(found) if found else None), found is None

    async def visible(jobs: list[Job]) -> list[JobView]:
        return [JobView.of(item) for item in jobs if await job_visible(item, records, session.principal)]

    return {
        "job": job,
        "job_id": job_id,
        "missing": missing,
        "running": await visible(await queue.running(JOBS_LISTED)),
        "failed": await visible(await queue.failed(JOBS_LISTED)),
        "dead": await visible(await queue.dead_letters(JOBS_LISTED)),
    }


JobIdQuery = Annotated[str, Query(alias="id")]


@router.get("/jobs")
async def jobs_page(request: Request, session: Session, job_id: JobIdQuery = "", done: str = "") -> Response:
    """A job by id (`?id=`), the running and failed jobs and the dead letters, with cancel and requeue; the panel
    refreshes itself."""
    context = await _jobs_context(_services(request), session, job_id.strip())
    return _render(request, "jobs.html", session=session, done=DONE_MESSAGES.get(done), **context)


@router.get("/jobs/panel")
async def jobs_panel(request: Request, session: Session, job_id: JobIdQuery = "") -> Response:
    """The jobs page's live part alone, for polling."""
    context = await _jobs_context(_services(request), session, job_id.strip())
    return _render(request, "_jobs_panel.html", session=session, **context)


@router.post("/jobs/{job_id}/{operation}")
async def job_control(request: Request, session: Session, _form: OperateForm, job_id: str, operation: str) -> Response:
    """Cancel a waiting job or requeue a dead letter, as `POST /api/jobs/{id}/cancel|requeue` does; a refusal
    (409: it runs or has finished; 404: unknown or another team's) is shown on the jobs page beside the job."""
    services = _services(request)
    control = services.get(JobControl)
    if operation not in ("cancel", "requeue"):
        raise ValidationFailed("the operation must be cancel or requeue", field="path.operation")
    _checked_job_id(job_id, "path.jobId")
    try:
        await visible_job(services.get(JobQueue), services.get(InstanceStore), job_id, session.principal)
        await (control.cancel(job_id) if operation == "cancel" else control.requeue(job_id))
    except AppError as error:
        if error.status not in (404, 409):
            raise
        context = await _jobs_context(services, session, job_id)
        return _render(request, "jobs.html", error.status, session=session, error=error.detail, **context)
    return _redirect(f"/ui/jobs?{urlencode({'id': job_id, 'done': operation})}")


# -- costs and budgets ---------------------------------------------------------------------------------------------


@router.get("/costs")
async def costs_page(
    request: Request,
    session: Session,
    from_: Annotated[str, Query(alias="from", max_length=40)] = "",
    to: Annotated[str, Query(max_length=40)] = "",
) -> Response:
    """Spend by team and by UTC day over a period (a chart and a table each), from the API's own cost reports; the
    caller sees the teams `GET /api/costs` would show it."""
    costs = _services(request).get(CostService)
    start, end, shown = parse_cost_range(from_, to, datetime.fromtimestamp(costs.now(), UTC).date())
    if shown.errors:
        return _render(request, "costs.html", 422, session=session, form=shown, costs=None)
    team, every_team = caller_team(session.principal)
    by_team = await costs.report("team", start, end, team, any_team=every_team)
    by_day = await costs.report("day", start, end, team, any_team=every_team)
    return _render(request, "costs.html", session=session, form=shown, costs=cost_page(by_team, by_day))


async def admin_session(session: Session) -> UiSession:
    """A session whose key holds the `admin` scope, as the API's budget routes require (403 naming it otherwise)."""
    check_scope(session.principal, "admin")
    return session


AdminSession = Annotated[UiSession, Depends(admin_session)]


async def _budgets_page(
    request: Request, session: UiSession, form: FormState, status: int = 200, done: str | None = None
) -> Response:
    budgets = _services(request).get(BudgetService)
    rows = [BudgetRow.of(await budgets.view(team)) for team in await budgets.teams()]
    return _render(request, "budgets.html", status, session=session, rows=rows, form=form, done=done)


@router.get("/budgets")
async def budgets_page(request: Request, session: AdminSession, done: str = "", team: str = "") -> Response:
    """Every team's limits and current use (as `GET /api/budgets`), and the form that sets one."""
    message = DONE_MESSAGES.get(done)
    if message and re.fullmatch(TEAM_PATTERN, team):
        message = f"{message} for {team}."
    return await _budgets_page(request, session, FormState(values={"team": NO_TEAM}), done=message)


@router.post("/budgets")
async def set_budget(request: Request, session: AdminSession, form: Form) -> Response:
    """Set a team's limits, as `PUT /api/budgets/{team}` does; the API's 422 messages go beside their fields."""
    team, limits, shown = parse_budget_form(form)
    if limits is None:
        return await _budgets_page(request, session, shown, status=422)
    await _services(request).get(BudgetService).set_limits(team, limits)
    return _redirect(f"/ui/budgets?{urlencode({'done': 'budget', 'team': team or NO_TEAM})}")


# -- API keys (admins) -------------------------------------------------------------------------------------------


async def _keys_page(
    request: Request, session: UiSession, form: FormState, status: int = 200, done: str | None = None
) -> Response:
    keys = [KeyView.of(stored) for stored in await _services(request).get(KeyRing).list()]
    return _render(request, "keys.html", status, session=session, keys=keys, form=form, done=done)


@router.get("/keys")
async def keys_page(request: Request, session: AdminSession, done: str = "", name: str = "") -> Response:
    """The keys created through the API (as `GET /api/keys`: never their key material) and the form that creates
    one."""
    message = DONE_MESSAGES.get(done)
    if message and _KEY_NAME.match(name):
        message = f"{message} ({name})."
    return await _keys_page(request, session, FormState(values={"scope": "read"}), done=message)


@router.post("/keys")
async def create_key(request: Request, session: AdminSession, form: Form) -> Response:
    """Create a key as `POST /api/keys` does; the key is in this answer only (a page answering the POST: never in a
    URL, never stored), with a copy button. The API's 422 and 409 messages go beside their fields."""
    create, shown = parse_key_form(form)
    if create is None:
        return await _keys_page(request, session, shown, status=422)
    try:
        stored, key = await _services(request).get(KeyRing).create(create.name, create.team, create.scope)
    except Conflict as error:
        shown.add_error("name", error.detail)
        return await _keys_page(request, session, shown, status=error.status)
    return _render(request, "key_created.html", 201, session=session, created=KeyView.of(stored), key=key)


async def _stored_key(keys: KeyRing, key_id: str) -> StoredKey:
    if not _KEY_ID.match(key_id):
        raise ValidationFailed("a key id is 16 hexadecimal digits", field="path.keyId")
    found = next((stored for stored in await keys.list() if stored.id == key_id), None)
    if found is None:
        raise NotFound(f"no API key with id {key_id!r}")
    return found


@router.get("/keys/{key_id}/revoke")
async def confirm_revoke_page(request: Request, session: AdminSession, key_id: str) -> Response:
    """Ask before revoking, naming the key."""
    stored = await _stored_key(_services(request).get(KeyRing), key_id)
    return _render(request, "confirm_revoke.html", session=session, stored=KeyView.of(stored))


@router.post("/keys/{key_id}/revoke")
async def revoke_key(request: Request, session: AdminSession, _form: Form, key_id: str) -> Response:
    """Revoke the key (after the confirmation page), as `DELETE /api/keys/{id}` does."""
    keys = _services(request).get(KeyRing)
    stored = await _stored_key(keys, key_id)
    await keys.revoke(stored.id)
    return _redirect(f"/ui/keys?{urlencode({'done': 'revoke', 'name': stored.name})}")
