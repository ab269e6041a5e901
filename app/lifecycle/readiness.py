"""Readiness: `running` on Novita means the container started, not that the app in it answers.

`ReadinessProbe.step()` probes every exposed port endpoint once and says what to do next: `Ready`, `RetryAfter(n)`
or `GaveUp(reason)`. It keeps no state between calls: the caller passes when probing began, so a job can run one
step, reschedule itself (`RetryLater(n)`), and resume on any replica after a restart.

A port answers when an HTTP port returns any HTTP response below 500 (a 404 is an app that listens; a 502/503/504
is Novita's proxy saying nothing listens yet), or a TCP port accepts a connection.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from app.fleet.states import RUNNING_STATUS
from app.novita.models import Instance, PortMapping


@dataclass(frozen=True)
class ReadinessPolicy:
    """Per-probe timeout, pause between rounds, and how long to keep trying after `running`."""

    probe_timeout_seconds: float = 10.0
    retry_interval_seconds: float = 5.0
    max_wait_seconds: float = 600.0

    def next_round(self, probing_since: float, now: float, reason: str) -> RetryAfter | GaveUp:
        """After a round that did not prove readiness: wait for another one, or give up when it would come too late.

        Whatever kept this round from succeeding (a silent port, or Novita not answering about the instance) counts
        against the same `max_wait_seconds`, so readiness ends at its deadline even during a Novita outage.
        """
        waited = now - probing_since
        if waited + self.retry_interval_seconds > self.max_wait_seconds:
            return GaveUp(f"waited {waited:.0f} s (limit {self.max_wait_seconds:g} s): {reason}")
        return RetryAfter(self.retry_interval_seconds, reason)


@dataclass(frozen=True)
class Ready:
    """Every exposed port answered."""

    endpoints: list[str]


@dataclass(frozen=True)
class RetryAfter:
    """Not yet: probe again after `seconds`."""

    seconds: float
    reason: str


@dataclass(frozen=True)
class GaveUp:
    """Readiness will not come: the instance stopped running, or `max_wait_seconds` passed."""

    reason: str


ReadinessResult = Ready | RetryAfter | GaveUp


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One verifying TLS context per process: building one loads the CA bundle (about 60 ms of CPU), and a readiness
    job builds a probe per step, so a burst of creates would otherwise spend most of the worker's time here."""
    return httpx.create_ssl_context()


class ReadinessProbe:
    """Probes an instance's port endpoints; one round per `step()`."""

    def __init__(self, policy: ReadinessPolicy, http: httpx.AsyncClient | None = None) -> None:
        self._policy = policy
        self._http = http or httpx.AsyncClient(
            timeout=policy.probe_timeout_seconds, follow_redirects=False, verify=_tls_context()
        )

    async def aclose(self) -> None:
        """Close the HTTP connection pool."""
        await self._http.aclose()

    async def step(self, instance: Instance, probing_since: float, now: float) -> ReadinessResult:
        """One round for `instance` as just read from Novita; `probing_since` is when it was first seen running."""
        if instance.status != RUNNING_STATUS:
            return GaveUp(f"the instance is {instance.status or 'unknown'}, not running")
        ports = [mapping for mapping in instance.port_mappings if mapping.port]
        failures = [f"port {mapping.port}: no endpoint yet" for mapping in ports if not mapping.endpoint]
        probed = [mapping for mapping in ports if mapping.endpoint]
        problems = await asyncio.gather(*(self._probe(mapping) for mapping in probed))
        failures += [f"port {m.port}: {problem}" for m, problem in zip(probed, problems, strict=True) if problem]
        if not failures:
            return Ready([str(mapping.endpoint) for mapping in probed])
        return self._policy.next_round(probing_since, now, "not answering: " + "; ".join(failures))

    async def _probe(self, mapping: PortMapping) -> str | None:
        """None when the endpoint answers, else what went wrong."""
        endpoint = str(mapping.endpoint)
        try:
            if mapping.type == "http":
                url = endpoint if "://" in endpoint else f"https://{endpoint}"
                response = await self._http.get(url, timeout=self._policy.probe_timeout_seconds)
                return None if response.status_code < 500 else f"HTTP {response.status_code}"
            return await self._probe_tcp(endpoint)
        except httpx.HTTPError as error:
            return type(error).__name__

    async def _probe_tcp(self, endpoint: str) -> str | None:
        parts = urlsplit(endpoint if "://" in endpoint else f"tcp://{endpoint}")
        if parts.hostname is None or parts.port is None:
            return f"endpoint {endpoint!r} has no host:port"
        try:
            async with asyncio.timeout(self._policy.probe_timeout_seconds):
                _, writer = await asyncio.open_connection(parts.hostname, parts.port)
        except (OSError, TimeoutError) as error:
            return type(error).__name__
        writer.close()
        await writer.wait_closed()
        return None
