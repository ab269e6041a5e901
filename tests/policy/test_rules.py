"""Each policy of the pack on a compliant and a violating resource, shaped as the engine sends it (camelCase)."""

from __future__ import annotations

import copy

import pytest
from pulumi_policy.proxy import UNKNOWN_STRING_VALUE

from policy import rules
from tests.policy.pack import resource, stack, validate

IMAGE_ID = "sha256:" + "ab" * 32


def api_container(**changes: object) -> dict:
    """A compliant production API container, with `changes` applied (a None value removes the key)."""
    props: dict = {
        "name": "novita-gpu-instance-api-1",
        "image": IMAGE_ID,
        "restart": "always",
        "healthcheck": {
            "tests": ["CMD", "python", "-m", "app.healthcheck"],
            "interval": "30s",
            "timeout": "10s",
            "retries": 5,
            "startPeriod": "2m0s",
        },
        "memory": 512,
        "memorySwap": 512,
        "cpus": "0.5",
        "envs": [
            "APP_ENV=production",
            "NOVITA_BASE_URL=https://api.novita.ai/gpu-instance/openapi/v1",
            "REDIS_URL=rediss://default:AVNS_secretpassword@valkey.aivencloud.com:13345",
            "NOVITA_API_KEY=sk_live_0123456789abcdefghij",
            "API_KEYS=ops:0123456789abcdef0123",
        ],
        "labels": [
            {"label": rules.ROLE_LABEL, "value": "api"},
            {"label": "novita-gpu-api.stack", "value": "prod"},
        ],
    }
    for key, value in changes.items():
        if value is None:
            props.pop(key, None)
        else:
            props[key] = value
    return props


def aiven_valkey(**changes: object) -> dict:
    props: dict = {
        "project": "novita-gpu-api",
        "serviceName": "novita-gpu-api-valkey",
        "plan": "startup-4",
        "terminationProtection": True,
        "valkeyUserConfig": {"valkeySsl": True, "ipFilterStrings": ["203.0.113.10/32"]},
    }
    props.update(changes)
    return props


def container(props: dict, name: str = "api-container"):
    return resource(rules.CONTAINER, props, name)


def with_healthcheck(**changes: object) -> dict:
    healthcheck = copy.deepcopy(api_container()["healthcheck"])
    healthcheck.update(changes)
    return api_container(healthcheck=healthcheck)


# ---- which stacks and which containers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stack_name", "app_env", "applies"),
    [
        ("prod", "production", True),
        ("prod", None, True),  # the name is enough: appEnv cannot turn the rules off
        ("production", "development", True),
        ("eu-live", "production", True),  # any name with appEnv production
        ("dev", "development", False),
        ("staging", None, False),
    ],
)
def test_rules_apply_to_production_stacks_only(deploying, stack_name, app_env, applies) -> None:
    deploying(stack_name, app_env)
    outcome = validate("api-restart-always", container(api_container(restart="unless-stopped")))
    if applies:
        assert outcome.not_applicable is None and len(outcome.violations) == 1
    else:
        assert outcome.violations == [] and "not a production stack" in (outcome.not_applicable or "")


def test_api_rules_skip_a_container_labelled_with_another_role(production) -> None:
    proxy = api_container(restart="unless-stopped", labels=[{"label": rules.ROLE_LABEL, "value": "proxy"}])
    outcome = validate("api-restart-always", container(proxy, "proxy"))
    assert outcome.violations == [] and "not an API container" in (outcome.not_applicable or "")


def test_an_unlabelled_container_that_gets_novitas_key_is_held_to_the_api_rules(production) -> None:
    unlabelled = api_container(restart="no", labels=None)
    assert len(validate("api-restart-always", container(unlabelled)).violations) == 1
    no_key = api_container(restart="no", labels=None, envs=["APP_ENV=production"])
    assert validate("api-restart-always", container(no_key)).not_applicable


def test_other_resource_types_are_ignored(production) -> None:
    for policy in rules.POLICIES:
        if policy.name != "api-replicas":
            assert validate(policy.name, resource("docker:index/network:Network", {"name": "n"})).violations == []


# ---- restart, healthcheck, limits, image ------------------------------------------------------------------


def test_compliant_api_container_passes_every_resource_policy(production) -> None:
    for policy in rules.POLICIES:
        if policy.name != "api-replicas":
            outcome = validate(policy.name, container(api_container()))
            assert outcome.violations == [] and outcome.not_applicable is None, policy.name


@pytest.mark.parametrize("restart", ["unless-stopped", "on-failure", "no", None])
def test_restart_must_be_always(production, restart) -> None:
    [message] = validate("api-restart-always", container(api_container(restart=restart))).violations
    assert f"restart is {restart!r}" in message


@pytest.mark.parametrize(
    ("start_period", "ok"),
    [
        ("2m0s", True),
        ("120s", True),
        ("5m0s", True),
        ("1m59s", False),
        ("1m0s", False),
        ("40s", False),
        ("2 minutes", False),
        (None, False),
    ],
)
def test_healthcheck_start_period_at_least_120s(production, start_period, ok) -> None:
    props = with_healthcheck(startPeriod=start_period) if start_period else with_healthcheck()
    if start_period is None:
        del props["healthcheck"]["startPeriod"]
    violations = validate("api-healthcheck-start-period", container(props)).violations
    assert (violations == []) is ok
    if not ok:
        assert "startPeriod" in violations[0]


@pytest.mark.parametrize("props", [api_container(healthcheck=None), with_healthcheck(tests=["NONE"])])
def test_a_missing_or_disabled_healthcheck_is_a_violation(production, props) -> None:
    [message] = validate("api-healthcheck-start-period", container(props)).violations
    assert "no healthcheck" in message


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"memory": None}, "no memory limit"),
        ({"memory": 0}, "no memory limit"),
        ({"memorySwap": None}, "memorySwap is None"),
        ({"memorySwap": 1024}, "memorySwap is 1024"),
        ({"memorySwap": -1}, "memorySwap is -1"),
        ({"cpus": None}, "no CPU limit"),
        ({"cpus": "0"}, "no CPU limit"),
    ],
)
def test_memory_and_cpu_limits_and_swap_equal_to_memory(production, changes, expected) -> None:
    [message] = validate("api-limits-without-swap", container(api_container(**changes))).violations
    assert expected in message


@pytest.mark.parametrize(
    ("image", "ok"),
    [
        (IMAGE_ID, True),
        ("registry.example.com/novita-gpu-api@" + IMAGE_ID, True),
        ("novita-gpu-api:prod", False),
        ("novita-gpu-api:latest", False),
        ("novita-gpu-api", False),
        ("sha256:abc", False),
    ],
)
def test_image_by_id_or_digest_never_by_tag(production, image, ok) -> None:
    violations = validate("api-image-by-id", container(api_container(image=image))).violations
    assert (violations == []) is ok


# ---- secrets in env ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "kind"),
    [
        ("WEBHOOK_URL=https://hooks:hunter2@example.com/in", "a URL with a password"),
        ("NOVITA_BASE_URL=https://user:pw@api.novita.ai/v1", "a URL with a password"),
        ("DEBUG_KEY=sk_live_0123456789abcdefghij", "an API key"),
        ("CACHE_SEED=AVNS_abcdefgh12345", "an Aiven service password"),
        ("TLS_KEY=-----BEGIN RSA PRIVATE KEY-----MIIE", "a private key"),
        ("AWS_ID=AKIAABCDEFGHIJKLMNOP", "an AWS access key ID"),
        ("GH=ghp_" + "a" * 36, "a GitHub token"),
        ("AUTH=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.abc", "a JSON web token"),
    ],
)
def test_a_credential_in_a_plain_env_var_is_a_violation(production, entry, kind) -> None:
    props = api_container(envs=api_container()["envs"] + [entry])
    [message] = validate("plain-env-has-no-credential", container(props)).violations
    name, _, value = entry.partition("=")
    assert f"env {name} holds {kind}" in message
    assert value not in message  # the violation is logged: it must not repeat the secret


def test_contract_secret_variables_are_exempt(production) -> None:
    # REDIS_URL carries a password and NOVITA_API_KEY an sk_ key: the program passes both as Pulumi secrets.
    assert validate("plain-env-has-no-credential", container(api_container())).violations == []


def test_every_container_is_scanned_for_credentials_not_only_the_api(production) -> None:
    proxy = {
        "name": "proxy",
        "envs": ["ACME_EAB=https://kid:hmac-secret@acme.example/"],
        "labels": [{"label": rules.ROLE_LABEL, "value": "proxy"}],
    }
    assert len(validate("plain-env-has-no-credential", container(proxy, "proxy")).violations) == 1


def test_an_unknown_env_entry_during_preview_skips_only_itself(production) -> None:
    envs = ["REDIS_URL=" + UNKNOWN_STRING_VALUE, UNKNOWN_STRING_VALUE, "WEBHOOK_URL=https://a:b@hooks.example.com"]
    violations = validate("plain-env-has-no-credential", container(api_container(envs=envs))).violations
    assert len(violations) == 1 and "WEBHOOK_URL" in violations[0]


@pytest.mark.parametrize(
    ("entry", "flagged"),
    [
        ("WEBHOOK_SECRET=whsec_1", False),  # a contract secret
        ("SIGNING_SECRET=abc", True),
        ("GITHUB_TOKEN=abc", True),
        ("ADMIN_PASSWORD=abc", True),
        ("OTHER_API_KEY=abc", True),
        ("ADMIN_PASSWORD=", False),  # empty: nothing to leak
        ("RATE_LIMIT_REQUESTS=600", False),
        ("TOKENIZER_THREADS=4", False),  # TOKEN only as part of a word
    ],
)
def test_a_secret_named_plain_variable_is_an_advisory_finding(production, entry, flagged) -> None:
    props = api_container(envs=api_container()["envs"] + [entry])
    violations = validate("secret-named-env-is-contract-secret", container(props)).violations
    assert (len(violations) == 1) is flagged


# ---- Aiven -------------------------------------------------------------------------------------------------


def test_aiven_valkey_needs_termination_protection_and_pulumi_protect(production) -> None:
    def outcome(props: dict, protect: bool):
        return validate("aiven-valkey-protected", resource(rules.AIVEN_VALKEY, props, "valkey-service", protect))

    assert outcome(aiven_valkey(), protect=True).violations == []
    [message] = outcome(aiven_valkey(terminationProtection=False), protect=True).violations
    assert "terminationProtection is off" in message
    [message] = outcome(aiven_valkey(), protect=False).violations
    assert "`protect` option is off" in message


@pytest.mark.parametrize(
    ("user_config", "expected"),
    [
        ({"ipFilterStrings": ["203.0.113.10/32", "198.51.100.0/24"]}, None),
        ({"ipFilterObjects": [{"network": "203.0.113.10/32", "description": "api"}]}, None),
        ({"ipFilterStrings": ["203.0.113.10/32", "0.0.0.0/0"]}, "admits every address (0.0.0.0/0)"),
        ({"ipFilterObjects": [{"network": "::/0"}]}, "admits every address (::/0)"),
        ({"ipFilters": ["0.0.0.0/0"]}, "admits every address"),
        ({"ipFilterStrings": []}, "no IP allow-list"),
        ({}, "no IP allow-list"),
    ],
)
def test_aiven_allow_list_is_never_open(production, user_config, expected) -> None:
    props = aiven_valkey(valkeyUserConfig=user_config)
    violations = validate("aiven-valkey-allow-list-not-open", resource(rules.AIVEN_VALKEY, props, "v")).violations
    if expected is None:
        assert violations == []
    else:
        [message] = violations
        assert expected in message


# ---- replicas (stack policy) -------------------------------------------------------------------------------


def replica(index: int) -> tuple[str, dict]:
    return rules.CONTAINER, api_container(name=f"novita-gpu-instance-api-{index}")


def proxy() -> tuple[str, dict]:
    return rules.CONTAINER, {"name": "proxy", "labels": [{"label": rules.ROLE_LABEL, "value": "proxy"}]}


def test_two_api_replicas_pass(production) -> None:
    outcome = validate("api-replicas", stack(replica(1), replica(2), proxy()))
    assert outcome.violations == [] and outcome.not_applicable is None


def test_one_api_replica_is_a_violation(production) -> None:
    [message] = validate("api-replicas", stack(replica(1), proxy())).violations
    assert message.startswith("1 API container(s)")


def test_replicas_are_counted_by_role_label(production) -> None:
    # Two containers, but only one of them is the API.
    [message] = validate("api-replicas", stack(replica(1), proxy(), (rules.AIVEN_VALKEY, aiven_valkey()))).violations
    assert message.startswith("1 API container(s)")


def test_replicas_do_not_apply_to_a_program_without_role_labels(production) -> None:
    unlabelled = api_container(labels=None)
    outcome = validate("api-replicas", stack((rules.CONTAINER, unlabelled)))
    assert outcome.violations == [] and "predates API replicas" in (outcome.not_applicable or "")


def test_replicas_do_not_apply_to_dev(deploying) -> None:
    deploying("dev", "development")
    assert validate("api-replicas", stack(replica(1))).not_applicable


# ---- helpers -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("2m0s", 120),
        ("120s", 120),
        ("1m30s", 90),
        ("1h", 3600),
        ("500ms", 0.5),
        ("1.5m", 90),
        ("0", 0),
        ("", None),
        ("2 m", None),
        ("120", None),
        ("1m0", None),
        ("abc", None),
    ],
)
def test_go_durations(text, seconds) -> None:
    assert rules.duration_seconds(text) == seconds


def test_policy_names_are_unique_and_only_the_name_heuristic_is_advisory() -> None:
    names = [policy.name for policy in rules.POLICIES]
    assert len(names) == len(set(names))
    advisory = [p.name for p in rules.POLICIES if p.enforcement_level == rules.EnforcementLevel.ADVISORY]
    assert advisory == ["secret-named-env-is-contract-secret"]
