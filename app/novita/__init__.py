"""The Novita v1 GPU-instance API client: typed models, typed errors, retries, circuit breaker and rate limit."""

from app.novita.client import NOVITA_CALLS, NOVITA_ERRORS, NovitaClient, UpstreamStatus
from app.novita.errors import (
    NovitaAuthError,
    NovitaBadRequest,
    NovitaCircuitOpen,
    NovitaCreateOutcomeUnknown,
    NovitaError,
    NovitaInsufficientResource,
    NovitaNotFound,
    NovitaRateLimited,
    NovitaStateConflict,
    NovitaTimeout,
    NovitaUnavailable,
)
from app.novita.models import (
    Cluster,
    CreateInstanceRequest,
    EnvVar,
    Instance,
    PortMapping,
    Product,
    RegistryAuth,
    StatusError,
    Template,
)
from app.novita.resilience import Clock

__all__ = [
    "NOVITA_CALLS",
    "NOVITA_ERRORS",
    "Clock",
    "Cluster",
    "CreateInstanceRequest",
    "EnvVar",
    "Instance",
    "NovitaAuthError",
    "NovitaBadRequest",
    "NovitaCircuitOpen",
    "NovitaClient",
    "NovitaCreateOutcomeUnknown",
    "NovitaError",
    "NovitaInsufficientResource",
    "NovitaNotFound",
    "NovitaRateLimited",
    "NovitaStateConflict",
    "NovitaTimeout",
    "NovitaUnavailable",
    "PortMapping",
    "Product",
    "RegistryAuth",
    "StatusError",
    "Template",
    "UpstreamStatus",
]
