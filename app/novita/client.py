"""Async client of the Novita GPU-instance API v1 (reference §1): the only module that speaks HTTP to Novita.

Every call goes through the same path: circuit breaker -> rate limiter -> one HTTP attempt under a timeout ->
typed error; idempotent calls are retried for 429, 5xx and network errors with backoff. A create is never
re-sent blindly: after an ambiguous failure it looks the instance up by its unique name first.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx
from prometheus_client import Counter
from pydantic import BaseModel, ValidationError

from app.novita.errors import (
    NovitaAuthError,
    NovitaCreateOutcomeUnknown,
    NovitaError,
    NovitaNotFound,
    NovitaRateLimited,
    NovitaTimeout,
    NovitaUnavailable,
    error_from_response,
)
from app.novita.models import (
    Cluster,
    CreateInstanceRequest,
    Instance,
    Product,
    RegistryAuth,
    Template,
)
from app.novita.ratebudget import LocalBudget, RateBudget, current_priority
from app.novita.resilience import CircuitBreaker, Clock, RetryPolicy

logger = logging.getLogger(__name__)

NOVITA_CALLS = Counter(
    "novita_calls",
    "HTTP attempts made to Novita, by client operation and outcome "
    "(ok, client_error, rate_limited, server_error, unrouted (a 404 without Novita's error body), timeout, "
    "network_error, circuit_open).",
    ["endpoint", "outcome"],
)
NOVITA_ERRORS = Counter(
    "novita_errors",
    "Novita client operations that raised an error to the caller, by operation and error kind.",
    ["endpoint", "outcome"],
)

_USER_AGENT = "novita-gpu-api/0.1"
_DEFAULT_PAGE_SIZE = 100
# Safety stop for list pagination should Novita keep answering new items forever.
_MAX_PAGES = 1000
# Items validated between two turns of the event loop (about a millisecond of CPU).
_PARSE_SLICE = 25

Result = TypeVar("Result")
Model = TypeVar("Model", bound=BaseModel)


@dataclass(frozen=True)
class UpstreamStatus:
    """What recent calls saw of Novita, for ``/health`` without a live call. Contains no secret.

    ``errors`` counts attempts that show trouble on Novita's side or with our key (429, 5xx, a 404 without Novita's
    error body, timeouts, network errors, a refused key); answers about the request itself (400, a ``*_NOT_FOUND``
    ...) count as Novita being up. ``last_error_kind`` is the ``NovitaError.kind`` of the latest such attempt
    (``auth``: our key).
    """

    breaker_state: str
    consecutive_failures: int
    calls: int
    errors: int
    last_success_at: datetime | None
    last_failure_at: datetime | None
    last_error_reason: str | None
    last_error_kind: str | None = None


class NovitaClient:
    """Client of the Novita v1 GPU-instance API with timeouts, retries, a circuit breaker and a rate limit.

    ``clock`` and ``rng`` exist for tests (manual time, deterministic jitter); ``transport`` lets tests wrap
    or replace the HTTP transport.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout_seconds: float = 10.0,
        max_attempts: int = 4,
        backoff_base_seconds: float = 0.5,
        backoff_max_seconds: float = 10.0,
        rate_limit_per_second: float = 10.0,
        breaker_failure_threshold: int = 5,
        breaker_reset_seconds: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        rate_limit_burst: int | None = None,
        page_size: int = _DEFAULT_PAGE_SIZE,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        rate_budget: RateBudget | None = None,
    ) -> None:
        if not api_key:
            raise ValueError("the Novita API key must not be empty")
        if timeout_seconds <= 0:
            raise ValueError("timeout_seconds must be positive")
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        self._api_key = api_key
        self._timeout_seconds = timeout_seconds
        self._page_size = page_size
        self._clock = clock or Clock()
        self._retry = RetryPolicy(max_attempts, backoff_base_seconds, backoff_max_seconds, rng or random.Random())
        self._breaker = CircuitBreaker(breaker_failure_threshold, breaker_reset_seconds, self._clock)
        # The app passes the deployment's shared budget (app/novita/ratebudget.py); alone, the client limits itself.
        self._limiter = rate_budget or LocalBudget(rate_limit_per_second, self._clock, burst=rate_limit_burst)
        self._http = httpx.AsyncClient(
            base_url=base_url,
            headers={
                "Authorization": f"Bearer {api_key}",
                "Content-Type": "application/json",
                "User-Agent": _USER_AGENT,
            },
            timeout=httpx.Timeout(timeout_seconds),
            transport=transport or httpx.AsyncHTTPTransport(retries=0),
            follow_redirects=False,
        )
        self._calls = 0
        self._errors = 0
        self._last_success_at: datetime | None = None
        self._last_failure_at: datetime | None = None
        self._last_error_reason: str | None = None
        self._last_error_kind: str | None = None

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    # -- products, clusters ------------------------------------------------------------------------------------

    async def list_products(
        self, *, product_name: str | None = None, cluster_id: str | None = None, billing_method: str | None = None
    ) -> list[Product]:
        """GPU products with prices and availability, optionally filtered (``productName`` is a fuzzy match)."""
        params = _without_none({"productName": product_name, "clusterId": cluster_id, "billingMethod": billing_method})
        body = await self._call("list_products", "GET", "/products", params=params)
        return _parse_list("list_products", Product, _list_field(body, "data"))

    async def list_clusters(self) -> list[Cluster]:
        """Clusters (regions) with the GPU types they offer."""
        body = await self._call("list_clusters", "GET", "/clusters")
        return _parse_list("list_clusters", Cluster, _list_field(body, "data"))

    # -- instances ---------------------------------------------------------------------------------------------

    async def create_instance(self, request: CreateInstanceRequest) -> str:
        """Create an instance and return its id, creating at most one even when answers are lost.

        After an ambiguous failure (timeout, network error or 5xx once the request was sent) the instance is looked
        up by its name: if it exists its id is returned, and the create is re-sent only when it does not. If that
        lookup fails too, ``NovitaCreateOutcomeUnknown`` is raised: look the name up before trying again.
        """
        body = request.to_wire()
        image_auth = request.image_auth.get_secret_value() if request.image_auth else None

        async def attempt() -> str:
            try:
                answer = await self._send("create_instance", "POST", "/gpu/instance/create", json=body)
                return _require_id(answer)
            except NovitaError as error:
                if image_auth:  # Novita may quote the body it refused: the registry password never leaves here
                    error.message = error.message.replace(image_auth, "***")
                if not isinstance(error, NovitaUnavailable) or not error.request_sent or not error.retry_in_client:
                    raise
                existing = await self._find_after_ambiguous_create(request.name, error)
                if existing is None:
                    raise
                logger.warning(
                    "novita create answer was lost but the instance exists; using it",
                    extra={"endpoint": "create_instance", "instance_id": existing.id, "reason": error.kind},
                )
                return existing.id

        return await self._with_retries("create_instance", attempt)

    async def _find_after_ambiguous_create(self, name: str, cause: NovitaUnavailable) -> Instance | None:
        try:
            return await self.find_instance_by_name(name)
        except NovitaError as lookup_error:
            raise NovitaCreateOutcomeUnknown(
                f"create failed ({cause}) and the lookup by name failed ({lookup_error}); "
                "the instance may exist: look it up by name before creating again",
                status=cause.status,
                reason=cause.reason,
            ) from lookup_error

    async def find_instance_by_name(self, name: str) -> Instance | None:
        """The live instance named exactly ``name`` (Novita's name filter is fuzzy), ignoring removed ones."""
        matches = [
            instance
            for instance in await self.list_instances(name=name)
            if instance.name == name and not instance.removed
        ]
        if len(matches) > 1:
            logger.warning("several live Novita instances share a name", extra={"name": name, "count": len(matches)})
        return matches[0] if matches else None

    async def list_instances(
        self, *, name: str | None = None, product_name: str | None = None, status: str | None = None
    ) -> list[Instance]:
        """All instances across every page, optionally filtered (``name`` and ``product_name`` are fuzzy)."""
        return [
            instance
            async for page in self.iter_instance_pages(name=name, product_name=product_name, status=status)
            for instance in page
        ]

    async def iter_instance_pages(
        self, *, name: str | None = None, product_name: str | None = None, status: str | None = None
    ) -> AsyncIterator[list[Instance]]:
        """``list_instances`` a page at a time, as the pages arrive (for a whole fleet: never all of it in memory)."""
        filters = _without_none({"name": name, "productName": product_name, "status": status})
        async for page in self._pages("list_instances", "/gpu/instances", "instances", filters, Instance):
            yield page

    async def get_instance(self, instance_id: str) -> Instance:
        """One instance; ``NovitaNotFound`` only when Novita's error body says it does not exist."""
        body = await self._call("get_instance", "GET", "/gpu/instance", params={"instanceId": instance_id})
        if "id" not in body:
            # Not Novita saying "not found": reading it so could mark a live instance deleted.
            raise NovitaUnavailable(f"Novita answered no instance for id {instance_id!r}", reason="EMPTY_ANSWER")
        return _parse("get_instance", Instance, body)

    async def start_instance(self, instance_id: str) -> None:
        """Start a stopped (``exited``) instance; ``NovitaStateConflict`` when it is not stopped."""
        await self._action("start_instance", "/gpu/instance/start", instance_id)

    async def stop_instance(self, instance_id: str) -> None:
        """Stop a running instance; ``NovitaStateConflict`` when it is not running."""
        await self._action("stop_instance", "/gpu/instance/stop", instance_id)

    async def restart_instance(self, instance_id: str) -> None:
        """Restart a running instance."""
        await self._action("restart_instance", "/gpu/instance/restart", instance_id)

    async def migrate_instance(self, instance_id: str) -> None:
        """Move a stopped instance (a reclaimed spot instance) onto other hardware; it comes back `running`."""
        await self._action("migrate_instance", "/gpu/instance/migrate", instance_id)

    async def delete_instance(self, instance_id: str) -> None:
        """Delete an instance in any state (its local data is lost)."""
        await self._action("delete_instance", "/gpu/instance/delete", instance_id)

    async def _action(self, endpoint: str, path: str, instance_id: str) -> None:
        # Novita answers actions with {}, {instanceId, state}, an empty body or plain text: only the status counts.
        await self._call(endpoint, "POST", path, json={"instanceId": instance_id}, expect_object=False)

    # -- templates, registry auths -----------------------------------------------------------------------------

    async def list_templates(self) -> list[Template]:
        """All templates visible to the account, across pages."""
        return await self._paginate("list_templates", "/templates", "template", {}, Template)

    async def get_template(self, template_id: str) -> Template:
        """One template; ``NovitaNotFound`` when it does not exist."""
        body = await self._call("get_template", "GET", "/template", params={"templateId": template_id})
        template = body.get("template")
        if not isinstance(template, dict):
            raise NovitaNotFound(f"Novita returned no template for id {template_id!r}", reason="EMPTY_ANSWER")
        return _parse("get_template", Template, template)

    async def list_registry_auths(self) -> list[RegistryAuth]:
        """Saved container-registry credentials (passwords kept as ``SecretStr``)."""
        body = await self._call("list_registry_auths", "GET", "/repository/auths")
        return _parse_list("list_registry_auths", RegistryAuth, _list_field(body, "data"))

    # -- health ------------------------------------------------------------------------------------------------

    def status(self) -> UpstreamStatus:
        """What recent calls and the breaker saw, without calling Novita."""
        return UpstreamStatus(
            breaker_state=self._breaker.state.value,
            consecutive_failures=self._breaker.consecutive_failures,
            calls=self._calls,
            errors=self._errors,
            last_success_at=self._last_success_at,
            last_failure_at=self._last_failure_at,
            last_error_reason=self._last_error_reason,
            last_error_kind=self._last_error_kind,
        )

    # -- plumbing ----------------------------------------------------------------------------------------------

    async def _paginate(
        self, endpoint: str, path: str, key: str, filters: dict[str, Any], model: type[Model]
    ) -> list[Model]:
        """Every item of a ``pageNum``/``pageSize`` list (see `_pages`)."""
        return [item async for page in self._pages(endpoint, path, key, filters, model) for item in page]

    async def _pages(
        self, endpoint: str, path: str, key: str, filters: dict[str, Any], model: type[Model]
    ) -> AsyncIterator[list[Model]]:
        """The new items of each page of a ``pageNum``/``pageSize`` list, right whichever base Novita counts pages
        from, each page validated as it arrives.

        Novita's docs allow ``pageNum`` 0 and its console starts at 1, and the server may cap a page below the size
        asked for (reference section 2). So pages are read from 0 on, items are kept once per id, and the listing
        ends only on evidence: an empty page, a page with nothing new (a server that ignores ``pageNum``), or
        ``total`` (a number or a numeric string) items read. Never on a short page, never on a guessed base.
        Validating a whole fleet's listing at once (100 pages at 10,000 instances) would hold the event loop for
        half a second, and every request would wait behind it; a page is validated in slices for the same reason.
        """
        count = 0
        seen_ids: set[str] = set()
        for page_num in range(_MAX_PAGES):
            params = {**filters, "pageNum": page_num, "pageSize": self._page_size}
            body = await self._call(endpoint, "GET", path, params=params)
            page = _list_field(body, key)
            new_items = [item for item in page if _item_id(item) not in seen_ids]
            seen_ids.update(_item_id(item) for item in new_items)
            count += len(new_items)
            if new_items:
                parsed: list[Model] = []
                for start in range(0, len(new_items), _PARSE_SLICE):
                    parsed.extend(_parse_list(endpoint, model, new_items[start : start + _PARSE_SLICE]))
                    await asyncio.sleep(0)  # a request's every await would otherwise queue behind a whole page
                yield parsed
            total = _as_count(body.get("total"))
            if total is not None and count >= total:
                break
            # Page 0 alone proves nothing: a 1-based server answers it empty or as page 1. After it, an empty page
            # ends the list; a repeated one too, except page 1 (the same as page 0 under that reading).
            if (page_num >= 1 and not page) or (page_num >= 2 and not new_items):
                break

    async def _call(
        self,
        endpoint: str,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        expect_object: bool = True,
    ) -> Any:
        """An idempotent call: retried on 429, 5xx and network errors; returns the decoded JSON body."""
        return await self._with_retries(
            endpoint,
            lambda: self._send(endpoint, method, path, params=params, json=json, expect_object=expect_object),
        )

    async def _with_retries(self, endpoint: str, attempt: Callable[[], Awaitable[Result]]) -> Result:
        """Run ``attempt`` until it succeeds, fails for good, or attempts run out; count what reaches the caller."""
        attempt_number = 0
        try:
            while True:
                attempt_number += 1
                try:
                    return await attempt()
                except NovitaError as error:
                    if not error.retry_in_client or attempt_number >= self._retry.max_attempts:
                        raise
                    delay = self._retry.delay_before_retry(attempt_number, getattr(error, "retry_after", None))
                    logger.warning(
                        "novita call failed, retrying",
                        extra={
                            "endpoint": endpoint,
                            "attempt": attempt_number,
                            "delay_seconds": round(delay, 3),
                            "reason": error.reason or error.kind,
                            "status": error.status,
                        },
                    )
                    await self._clock.sleep(delay)
        except NovitaError as error:
            NOVITA_ERRORS.labels(endpoint=endpoint, outcome=error.kind).inc()
            raise

    async def _send(
        self,
        endpoint: str,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        expect_object: bool = True,
    ) -> Any:
        """One HTTP attempt behind the breaker and the rate limiter; returns decoded JSON or raises a typed error.

        ``expect_object``: the answer must be a JSON object (everything but the actions, whose bodies vary).
        """
        try:
            self._breaker.before_call()
        except NovitaError:
            NOVITA_CALLS.labels(endpoint=endpoint, outcome="circuit_open").inc()
            raise
        await self._limiter.acquire(current_priority())
        self._calls += 1
        try:
            async with asyncio.timeout(self._timeout_seconds):
                response = await self._http.request(method, path, params=params, json=json)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            # The request never left: even a create may be re-sent as is.
            raise self._transport_failure(endpoint, exc, request_sent=False) from None
        except (httpx.TransportError, TimeoutError) as exc:
            raise self._transport_failure(endpoint, exc, request_sent=True) from None
        if response.is_success:
            body = _decode_json(response)
            if expect_object and not isinstance(body, dict):
                # A 2xx that is not Novita's JSON (a proxy page, a truncated body) is an upstream failure: reading
                # it as "no items" could make a lookup miss an instance and a create run twice.
                invalid = NovitaUnavailable(
                    f"Novita answered HTTP {response.status_code} without a JSON object",
                    status=response.status_code,
                    reason="INVALID_RESPONSE",
                )
                self._record(endpoint, "server_error", breaker_ok=False, error=invalid)
                raise invalid
            self._record(endpoint, "ok", breaker_ok=True)
            return body
        error = error_from_response(response, self._redact)
        # Answers about the request (400, a *_NOT_FOUND, 409) mean Novita itself is fine. A 5xx or a 404 without
        # Novita's error body is Novita (or what is in front of it) failing; 429 and a refused key are not fine for us.
        failing = isinstance(error, NovitaUnavailable)
        outcome = (
            "server_error"
            if response.status_code >= 500
            else "unrouted"
            if failing
            else "rate_limited"
            if isinstance(error, NovitaRateLimited)
            else "client_error"
        )
        upstream_trouble = failing or isinstance(error, NovitaRateLimited | NovitaAuthError)
        self._record(endpoint, outcome, breaker_ok=not failing, error=error if upstream_trouble else None)
        if isinstance(error, NovitaRateLimited):  # Novita's limit is the account's: every replica holds back
            retry_after = error.retry_after
            await self._limiter.slow_down(min(retry_after, self._retry.backoff_max_seconds) if retry_after else None)
        raise error

    def _transport_failure(self, endpoint: str, exc: Exception, *, request_sent: bool) -> NovitaUnavailable:
        timed_out = isinstance(exc, (TimeoutError, httpx.TimeoutException))
        error_class = NovitaTimeout if timed_out else NovitaUnavailable
        detail = self._redact(str(exc)) or type(exc).__name__
        error = error_class(
            f"{'timed out' if timed_out else 'network error'} calling Novita ({type(exc).__name__}: {detail})",
            reason="TIMEOUT" if timed_out else "NETWORK_ERROR",
            request_sent=request_sent,
        )
        self._record(endpoint, "timeout" if timed_out else "network_error", breaker_ok=False, error=error)
        return error

    def _record(self, endpoint: str, outcome: str, *, breaker_ok: bool, error: NovitaError | None = None) -> None:
        """Feed one attempt's outcome to the metrics, the breaker and the upstream status."""
        NOVITA_CALLS.labels(endpoint=endpoint, outcome=outcome).inc()
        if breaker_ok:
            self._breaker.record_success()
        else:
            self._breaker.record_failure()
        now = datetime.now(UTC)
        if error is None:
            self._last_success_at = now
        else:
            self._errors += 1
            self._last_failure_at = now
            self._last_error_reason = error.reason or error.kind
            self._last_error_kind = error.kind

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "***")


def _decode_json(response: httpx.Response) -> Any:
    """The JSON body, or None for the empty or non-JSON bodies Novita sends for some actions."""
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        return None


def _parse(endpoint: str, model: type[Model], data: Any) -> Model:
    """Validate one answer object; a shape Novita should not send becomes ``NovitaUnavailable``."""
    try:
        return model.model_validate(data)
    except ValidationError as error:
        # Name the fields only: the input values may hold secrets (SSH passwords, registry credentials).
        fields = ", ".join(
            ".".join(str(part) for part in item["loc"]) + f" ({item['type']})" for item in error.errors()
        )
        NOVITA_ERRORS.labels(endpoint=endpoint, outcome="unavailable").inc()
        raise NovitaUnavailable(
            f"Novita answered {endpoint} with an unexpected {model.__name__}: {fields}", reason="INVALID_RESPONSE"
        ) from None


def _parse_list(endpoint: str, model: type[Model], items: list[Any]) -> list[Model]:
    return [_parse(endpoint, model, item) for item in items]


def _list_field(body: dict[str, Any], key: str) -> list[Any]:
    """``body[key]`` when it is a list; Novita may leave it out or send null when there are no items."""
    value = body.get(key)
    return value if isinstance(value, list) else []


def _item_id(item: Any) -> str:
    """The id of a listed item (templates spell it ``Id``); items without one count as one unnamed item."""
    return str(item.get("id", item.get("Id"))) if isinstance(item, dict) else repr(item)


def _as_count(value: Any) -> int | None:
    """``total`` as Novita may send it: a number, a numeric string, or absent."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _require_id(body: dict[str, Any]) -> str:
    instance_id = body.get("id")
    if not instance_id:
        # Novita accepted the create but did not say which instance: ambiguous like a lost answer.
        raise NovitaUnavailable("Novita answered the create without an instance id", reason="INVALID_RESPONSE")
    return str(instance_id)


def _without_none(params: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in params.items() if value is not None}
