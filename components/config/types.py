"""Reusable validated field types for the settings models, each backed by a plain function of `validators.py`.

A type is `Annotated[<python type>, BeforeValidator(<function>)]`: the function sees the raw config value (a string
from the Pulumi CLI, or the default from `keys.KEYS`) and returns the canonical value, or raises ValueError with a
message the loader prefixes with the key. The factories `whole_number`, `one_of` and `matching` make the validator of a
bounded variant, written where it is used: `Annotated[int, t.whole_number(1, 3600)]` (a type a type checker reads).
"""

from __future__ import annotations

from functools import partial
from typing import Annotated

import pulumi
from pydantic import BeforeValidator, SecretStr

from components.config import validators as check
from components.config.keys import DOCKER_HOST_FORMS


def whole_number(minimum: int, maximum: int | None = None, unit: str = "") -> BeforeValidator:
    """An int within bounds, e.g. `Annotated[int, whole_number(128, unit=" MB")]`."""
    return BeforeValidator(partial(check.whole_number, minimum=minimum, maximum=maximum, unit=unit))


def one_of(*allowed: str) -> BeforeValidator:
    """A str taking one of `allowed`: `Annotated[str, one_of(...)]`."""
    return BeforeValidator(partial(check.one_of, allowed=allowed))


def matching(pattern: str, allowed: str) -> BeforeValidator:
    """A str matching `pattern` in full; `allowed` says what matches, in words: `Annotated[str, matching(...)]`."""
    return BeforeValidator(partial(check.matching, pattern=pattern, allowed=allowed))


Text = Annotated[str, BeforeValidator(check.text_value)]
OptionalText = Annotated[str, BeforeValidator(partial(check.text_value, allow_empty=True))]
Flag = Annotated[bool, BeforeValidator(check.flag)]
OptionalFlag = Annotated[str, BeforeValidator(check.optional_flag)]
Port = Annotated[int, whole_number(1, 65535)]
Seconds = Annotated[int, whole_number(1, unit=" s")]
SecondsOrZero = Annotated[int, whole_number(0, unit=" s")]
Count = Annotated[int, whole_number(1)]
CountOrZero = Annotated[int, whole_number(0)]
GoDuration = Annotated[str, BeforeValidator(partial(check.canonical_duration, positive=True))]
GoDurationOrZero = Annotated[str, BeforeValidator(partial(check.canonical_duration, positive=False))]
OptionalGoDuration = Annotated[str | None, BeforeValidator(check.optional_duration)]
Cpus = Annotated[str, BeforeValidator(check.cpus)]
DockerName = Annotated[str, matching(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*", "a Docker name (letters, digits, _ . -)")]
Executable = Annotated[str, BeforeValidator(check.executable)]
IpAddress = Annotated[str, BeforeValidator(check.ip_address)]
HttpUrl = Annotated[str, BeforeValidator(check.http_url)]
OptionalHttpUrl = Annotated[str, BeforeValidator(partial(check.http_url, allow_empty=True))]
CidrList = Annotated[tuple[str, ...], BeforeValidator(check.cidr_list)]
OriginList = Annotated[tuple[str, ...], BeforeValidator(check.origin_list)]
ClusterIdList = Annotated[tuple[str, ...], BeforeValidator(check.cluster_id_list)]
OptionalDomain = Annotated[str, BeforeValidator(check.domain_name)]
OptionalEmail = Annotated[str, BeforeValidator(check.email_address)]
DockerHostList = Annotated[tuple[str, ...], BeforeValidator(partial(check.docker_host_list, forms=DOCKER_HOST_FORMS))]
# A secret config value; empty means not set. The loader has already refused one stored in plain text.
# Empty (no limit) or a value: the budgets' defaults.
OptionalWholeNumber = Annotated[str, matching(r"|\d{1,6}", "empty (no limit) or a whole number")]
OptionalUsd = Annotated[str, matching(r"|\d{1,9}(\.\d{1,6})?", "empty (no limit) or USD like 250.00")]
OptionalSecret = Annotated[SecretStr | None, BeforeValidator(lambda raw: SecretStr(raw) if raw else None)]


def secret_output(value: SecretStr) -> pulumi.Output[str]:
    """A secret as the secret Output that resources take: it never reaches the state or the logs in clear."""
    return pulumi.Output.secret(value.get_secret_value())
