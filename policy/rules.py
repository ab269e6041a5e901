"""The seed's production lessons as Pulumi policies, checked at `pulumi preview/up --policy-pack policy`.

The pack reads resources the way the engine hands them over: provider inputs with camelCase names
(`restart`, `healthcheck.startPeriod`, `memorySwap`, `valkeyUserConfig.ipFilterStrings`), numbers as numbers,
and secrets already unwrapped: pulumi-policy deserialises a secret input to its plain value with no marker, so a
policy cannot tell a secret env entry from a plain one. The env policies therefore judge an entry by its value
(`plain-env-has-no-credential`) or its name (`secret-named-env-is-contract-secret`), and exempt only the variables
the container contract passes as Pulumi secrets (`SECRET_ENV_NAMES`); tests/policy proves the program sends exactly
those as secrets.

Values the engine does not know yet during a preview (a new image ID, Aiven's URL) arrive as unknowns; reading one
makes pulumi-policy report "can't run policy during preview" as an advisory note, and `pulumi up` checks the value
before it creates the resource. Env entries are read one by one so that one unknown entry skips only itself.

Kept free of imports from this repository: the CLI runs the pack from `policy/` as its own program.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import pulumi
from pulumi_policy import (
    EnforcementLevel,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)
from pulumi_policy.proxy import UnknownValueError

PROJECT = "novita-gpu-api"
# A stack is production when its name is one of these, or when its config says `appEnv: production` (the switch
# that turns on the program's own production rules). Either is enough, so renaming the stack escapes nothing.
PRODUCTION_STACKS = frozenset({"prod", "production"})

CONTAINER = "docker:index/container:Container"
AIVEN_VALKEY = "aiven:index/valkey:Valkey"

# The label convention of the program's containers (issue 11): role = api | proxy | valkey, and the stack name.
ROLE_LABEL = "novita-gpu-api.role"
API_ROLE = "api"
# Only the API receives Novita's key, so a container without a role label that gets one is an API container:
# forgetting the label must not take a container out of the API rules.
API_ONLY_ENV = "NOVITA_API_KEY"

MIN_START_PERIOD_SECONDS = 120  # the seed: Aiven's first TLS connection needed up to two minutes
MIN_API_REPLICAS = 2

# The container contract's secret variables (docs/architecture.md): the program passes each as a Pulumi secret.
SECRET_ENV_NAMES = frozenset(
    {"REDIS_URL", "REDIS_PASSWORD", "NOVITA_API_KEY", "API_KEYS", "API_KEY_HASH_SECRET", "WEBHOOK_SECRET"}
)

# An image ID (`sha256:<64 hex>`) or a pushed image's digest reference (`name@sha256:<64 hex>`): both immutable.
_IMMUTABLE_IMAGE = re.compile(r"^(?:[^@\s]+@)?sha256:[0-9a-f]{64}$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_DURATION_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_SECRET_NAME = re.compile(
    r"(?:^|_)(?:SECRET|TOKEN|PASSWORD|PASSWD|PASSPHRASE|API_?KEYS?|ACCESS_KEY|PRIVATE_KEY|CREDENTIALS?)(?:_|$)"
)
# Values that are credentials whatever their variable is called.
_CREDENTIAL_VALUES = (
    ("a URL with a password", re.compile(r"^[a-z][a-z0-9+.-]*://[^/@\s:]*:[^/@\s]+@", re.IGNORECASE)),
    ("a private key", re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")),
    ("an API key (sk_/sk- prefix)", re.compile(r"^sk[_-][A-Za-z0-9_-]{16,}$")),
    ("an Aiven service password", re.compile(r"^AVNS_[A-Za-z0-9_-]{8,}$")),
    ("a GitHub token", re.compile(r"^(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,})$")),
    ("an AWS access key ID", re.compile(r"^(?:AKIA|ASIA)[0-9A-Z]{16}$")),
    ("a Slack token", re.compile(r"^xox[abprs]-[A-Za-z0-9-]{10,}$")),
    ("a JSON web token", re.compile(r"^eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*$")),
)
_OPEN_NETWORKS = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))


class ReportViolation(Protocol):
    """The callback a policy reports a violation with. pulumi-policy's own `ReportViolation` type declares `urn`
    required, but the callback it passes defaults it to None, and resource policies never give one."""

    def __call__(self, message: str, urn: str | None = None) -> None: ...


# ---- reading what the engine sends --------------------------------------------------------------------------


def is_production_stack() -> bool:
    """True for the stack being deployed when it is production. The CLI gives a pack the stack's name and config."""
    return pulumi.get_stack() in PRODUCTION_STACKS or pulumi.Config(PROJECT).get("appEnv") == "production"


def _skip_unless_production(args: ResourceValidationArgs | StackValidationArgs) -> None:
    if not is_production_stack():
        args.not_applicable(f"stack {pulumi.get_stack()!r} is not a production stack")


def known_items(values: Sequence[Any] | None) -> Iterator[Any]:
    """The items of a list input that are known; during a preview an item computed from another resource is not."""
    for index in range(len(values or ())):
        try:
            yield values[index]  # type: ignore[index]
        except UnknownValueError:
            continue


def env_entries(props: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(name, value) of each known `envs` entry (`NAME=value`)."""
    for entry in known_items(props.get("envs")):
        name, _, value = str(entry).partition("=")
        yield name, value


def labels(props: Mapping[str, Any]) -> dict[str, str]:
    """A container's labels (the provider's list of `{label, value}`) as a dict; unknown ones are left out."""
    found: dict[str, str] = {}
    for item in known_items(props.get("labels")):
        try:
            found[str(item["label"])] = str(item["value"])
        except UnknownValueError:
            continue
    return found


def role(props: Mapping[str, Any]) -> str | None:
    """The container's role by the label convention; an unlabelled container that gets Novita's key is the API."""
    labelled = labels(props).get(ROLE_LABEL)
    if labelled is not None:
        return labelled
    if any(name == API_ONLY_ENV for name, _ in env_entries(props)):
        return API_ROLE
    return None


def duration_seconds(text: str) -> float | None:
    """A Go duration (`2m0s`, `120s`, `1m30s`, `500ms`) in seconds; None if it is not one."""
    text = text.strip()
    if not text:
        return None
    if text == "0":
        return 0.0
    position, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            return None
        total += float(match.group(1)) * _DURATION_UNIT_SECONDS[match.group(2)]
        position = match.end()
    return total if position == len(text) else None


def credential_kind(value: str) -> str | None:
    """What kind of credential `value` looks like, or None."""
    for kind, pattern in _CREDENTIAL_VALUES:
        if pattern.search(value):
            return kind
    return None


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


# ---- resource policies -------------------------------------------------------------------------------------


def _production_resource(args: ResourceValidationArgs, resource_type: str) -> bool:
    """True when `args` is a `resource_type` of a production stack. Another type is not the policy's business;
    another stack marks the policy not applicable."""
    if args.resource_type != resource_type:
        return False
    _skip_unless_production(args)
    return True


def _api_container(args: ResourceValidationArgs) -> bool:
    """True when `args` is an API container of a production stack (else marks the policy not applicable)."""
    if not _production_resource(args, CONTAINER):
        return False
    if role(args.props) != API_ROLE:
        args.not_applicable(f"not an API container ({ROLE_LABEL} is not {API_ROLE!r})")
    return True


def validate_restart_always(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    if not _api_container(args):
        return
    restart = args.props.get("restart")
    if restart != "always":
        report_violation(
            f"{args.name}: restart is {restart!r}; production needs 'always' (the seed's crashed API stayed down)"
        )


def validate_healthcheck_start_period(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    if not _api_container(args):
        return
    healthcheck = args.props.get("healthcheck")
    if not healthcheck or not healthcheck.get("tests") or healthcheck["tests"][0] == "NONE":
        report_violation(
            f"{args.name}: no healthcheck; production needs one with a start period of "
            f"{MIN_START_PERIOD_SECONDS}s or more"
        )
        return
    start_period = healthcheck.get("startPeriod")
    seconds = duration_seconds(str(start_period or "0s"))
    if seconds is None or seconds < MIN_START_PERIOD_SECONDS:
        report_violation(
            f"{args.name}: healthcheck.startPeriod is {start_period!r}; production needs at least "
            f"{MIN_START_PERIOD_SECONDS}s (2m0s) so Valkey's first TLS connection is not counted as a failure"
        )


def validate_limits_without_swap(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    if not _api_container(args):
        return
    props = args.props
    memory, swap, cpus = props.get("memory"), props.get("memorySwap"), props.get("cpus")
    if (_number(memory) or 0) <= 0:
        report_violation(f"{args.name}: no memory limit (memory is {memory!r})")
    elif _number(swap) != _number(memory):
        report_violation(
            f"{args.name}: memorySwap is {swap!r}; set it equal to memory ({memory}) so the "
            "container never swaps and the limit is what the provider reads back"
        )
    if (_number(cpus) or 0) <= 0:
        report_violation(f"{args.name}: no CPU limit (cpus is {cpus!r})")


def validate_image_by_id(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    if not _api_container(args):
        return
    image = args.props.get("image")
    if not isinstance(image, str) or not _IMMUTABLE_IMAGE.match(image):
        report_violation(
            f"{args.name}: image is {image!r}; use the built image's ID (sha256:...) or a digest reference "
            "(name@sha256:...): a tag can move, so a rebuild would not roll out and a rollback could not name it"
        )


def validate_no_credential_in_plain_env(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    if not _production_resource(args, CONTAINER):
        return
    for name, value in env_entries(args.props):
        if name in SECRET_ENV_NAMES:
            continue
        kind = credential_kind(value)
        if kind:
            # Never repeat the value: the violation is printed and kept in the CI log.
            report_violation(
                f"{args.name}: env {name} holds {kind}; pass it as a Pulumi secret through a "
                f"secret variable of the container contract ({', '.join(sorted(SECRET_ENV_NAMES))})"
            )


def validate_secret_named_env_is_contract_secret(
    args: ResourceValidationArgs, report_violation: ReportViolation
) -> None:
    if not _production_resource(args, CONTAINER):
        return
    for name, value in env_entries(args.props):
        if value and name not in SECRET_ENV_NAMES and _SECRET_NAME.search(name):
            report_violation(
                f"{args.name}: env {name} is named like a secret but is not one of the contract's "
                "secret variables, which the program passes as Pulumi secrets; add it to the contract "
                "(and to SECRET_ENV_NAMES) or rename it"
            )


def validate_aiven_valkey_protected(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    if not _production_resource(args, AIVEN_VALKEY):
        return
    if args.props.get("terminationProtection") is not True:
        report_violation(f"{args.name}: terminationProtection is off; production's Valkey holds the job queue")
    if not args.opts.protect:
        report_violation(f"{args.name}: the Pulumi `protect` option is off; `pulumi destroy` would delete it")


def open_allow_list_entries(user_config: Mapping[str, Any] | None) -> list[str] | None:
    """The entries of an Aiven IP allow-list that admit everyone; None when there is no allow-list at all."""
    user_config = user_config or {}
    networks = [str(n) for n in known_items(user_config.get("ipFilterStrings"))]
    networks += [str(n) for n in known_items(user_config.get("ipFilters"))]
    for item in known_items(user_config.get("ipFilterObjects")):
        networks.append(str(item.get("network")))
    if not networks:
        return None
    open_entries = []
    for network in networks:
        try:
            parsed = ipaddress.ip_network(network, strict=False)
        except ValueError:
            continue  # Aiven refuses it; not an open network
        if parsed in _OPEN_NETWORKS:
            open_entries.append(network)
    return open_entries


def validate_aiven_allow_list_not_open(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    if not _production_resource(args, AIVEN_VALKEY):
        return
    open_entries = open_allow_list_entries(args.props.get("valkeyUserConfig"))
    if open_entries is None:
        report_violation(f"{args.name}: no IP allow-list; Aiven then admits every address (0.0.0.0/0)")
    elif open_entries:
        report_violation(
            f"{args.name}: the IP allow-list admits every address ({', '.join(open_entries)}); "
            "list the API hosts' egress addresses"
        )


# ---- stack policy ------------------------------------------------------------------------------------------


def validate_api_replicas(args: StackValidationArgs, report_violation: ReportViolation) -> None:
    _skip_unless_production(args)
    containers = [r for r in args.resources if r.resource_type == CONTAINER]
    if not any(ROLE_LABEL in labels(r.props) for r in containers):
        # The role labels came with replicas (issue 11); a program without them has one API container by design.
        args.not_applicable(f"no container carries the {ROLE_LABEL} label: the program predates API replicas")
    replicas = [r for r in containers if role(r.props) == API_ROLE]
    if len(replicas) < MIN_API_REPLICAS:
        report_violation(
            f"{len(replicas)} API container(s) ({ROLE_LABEL}={API_ROLE}); production needs at least "
            f"{MIN_API_REPLICAS} so a deploy or a crash never takes the API away"
        )


# ---- the pack ----------------------------------------------------------------------------------------------


# Mandatory: each rule is a lesson of an outage or a leak, and the check reads a value, not a guess.
# Advisory: `secret-named-env-is-contract-secret` judges by a variable's name only (a token bucket size is not a
# secret), so it warns and leaves the decision to a person.
def _policy(
    name: str,
    description: str,
    validate: Callable[[ResourceValidationArgs, ReportViolation], None],
    level: EnforcementLevel = EnforcementLevel.MANDATORY,
) -> ResourceValidationPolicy:
    # arg-type: pulumi-policy's `ResourceValidation` type takes its `ReportViolation` (see the class above).
    return ResourceValidationPolicy(
        name=name,
        description=description,
        enforcement_level=level,
        validate=validate,  # type: ignore[arg-type]
    )


POLICIES: list[ResourceValidationPolicy | StackValidationPolicy] = [
    _policy("api-restart-always", "Production API containers restart always.", validate_restart_always),
    _policy(
        "api-healthcheck-start-period",
        f"Production API containers have a healthcheck with a start period of {MIN_START_PERIOD_SECONDS}s or more.",
        validate_healthcheck_start_period,
    ),
    _policy(
        "api-limits-without-swap",
        "Production API containers have memory and CPU limits, and memorySwap equal to memory.",
        validate_limits_without_swap,
    ),
    _policy(
        "api-image-by-id",
        "Production API containers run an image by ID or digest, never by a mutable tag.",
        validate_image_by_id,
    ),
    _policy(
        "plain-env-has-no-credential",
        "No container env var outside the contract's secret variables holds a credential.",
        validate_no_credential_in_plain_env,
    ),
    _policy(
        "secret-named-env-is-contract-secret",
        "Env vars named like secrets are the contract's secret variables.",
        validate_secret_named_env_is_contract_secret,
        EnforcementLevel.ADVISORY,
    ),
    _policy(
        "aiven-valkey-protected",
        "Production's Aiven Valkey has termination protection and Pulumi protect.",
        validate_aiven_valkey_protected,
    ),
    _policy(
        "aiven-valkey-allow-list-not-open",
        "Production's Aiven Valkey admits only listed addresses, never 0.0.0.0/0.",
        validate_aiven_allow_list_not_open,
    ),
    StackValidationPolicy(
        name="api-replicas",
        description=f"Production runs at least {MIN_API_REPLICAS} API containers.",
        enforcement_level=EnforcementLevel.MANDATORY,
        validate=validate_api_replicas,  # type: ignore[arg-type]  # its `ReportViolation`, as in `_policy`
    ),
]
