"""The plain checks behind the settings' field types (components/config/validators.py), on their own."""

from __future__ import annotations

import pulumi
import pytest
from pydantic import ValidationError

from components.config import validators as check
from components.config.models import HealthcheckSettings, RuleViolation


def _refused(function, *args, **kwargs) -> str:
    with pytest.raises(ValueError) as raised:
        function(*args, **kwargs)
    return str(raised.value)


@pulumi.runtime.test
def test_whole_numbers_take_ints_and_digit_strings_within_bounds() -> None:
    assert check.whole_number("3003", 1, 65535) == 3003
    assert check.whole_number(512, 128) == 512
    assert _refused(check.whole_number, "65536", 1, 65535) == "65536 is not allowed; must be between 1 and 65535"
    assert _refused(check.whole_number, 127, 128, unit=" MB") == "127 MB is not allowed; must be at least 128 MB"
    assert _refused(check.whole_number, "1.5", 0) == "'1.5' is not a whole number"
    assert _refused(check.whole_number, True, 0) == "True is not a whole number"


@pulumi.runtime.test
def test_flags_are_true_or_false_only() -> None:
    assert [check.flag(v) for v in ("true", "false", "TRUE", True, False)] == [True, False, True, True, False]
    for loose in ("yes", "1", "on", ""):
        assert "use true or false" in _refused(check.flag, loose)
    assert [check.optional_flag(v) for v in ("", "true", "False")] == ["", "true", "false"]
    assert "leave it empty" in _refused(check.optional_flag, "auto")


@pulumi.runtime.test
def test_durations_are_canonical_and_optional_ones_may_be_off() -> None:
    assert check.canonical_duration("120s", positive=True) == "2m0s"
    assert check.canonical_duration("0", positive=False) == "0s"
    assert "must be longer than 0s" in _refused(check.canonical_duration, "0s", positive=True)
    assert "is not a duration" in _refused(check.canonical_duration, "2 minutes", positive=False)
    assert check.optional_duration("") is None and check.optional_duration("5000ms") == "5s"


@pulumi.runtime.test
def test_lists_come_as_json_text_or_lists() -> None:
    assert check.string_list('["a", " b "]', "things", "[]") == ["a", "b"]
    assert check.string_list(["a"], "things", "[]") == ["a"]
    assert check.string_list("", "things", "[]") == []
    assert _refused(check.string_list, "a,b", "things", '["a"]') == 'must be a list of things, e.g. ["a"]'
    assert _refused(check.string_list, "[1]", "things", '["a"]') == 'must be a list of things, e.g. ["a"]'
    assert check.cidr_list('["10.0.0.7/8"]') == ["10.0.0.0/8"]
    assert check.origin_list('["*", "http://localhost:5173"]') == ["*", "http://localhost:5173"]
    assert "not an origin" in _refused(check.origin_list, '["app.example.com"]')
    assert check.cluster_id_list('["us-ca-6"]') == ["us-ca-6"]
    assert "twice" in _refused(check.cluster_id_list, '["a", "a"]')


@pulumi.runtime.test
def test_docker_hosts_are_ssh_tcp_or_unix_urls_each_once() -> None:
    hosts = '["ssh://deploy@api-a", "ssh://api-b:2222", "tcp://10.0.0.5:2376", "unix:///run/docker-2.sock"]'
    assert check.docker_host_list(hosts, forms="FORMS") == [
        "ssh://deploy@api-a",
        "ssh://api-b:2222",
        "tcp://10.0.0.5:2376",
        "unix:///run/docker-2.sock",
    ]
    assert check.docker_host_list("", forms="FORMS") == []
    assert _refused(check.docker_host_list, '["ssh://a", "api-b"]', forms="FORMS") == (
        "item 1 'api-b' is not a Docker host URL; use FORMS"
    )
    for bad in ("tcp://10.0.0.5", "http://api-b:2375", "ssh://a b", "unix://relative.sock"):
        assert "is not a Docker host URL" in _refused(check.docker_host_list, [bad], forms="FORMS"), bad
    assert _refused(check.docker_host_list, ["ssh://a", "ssh://a"], forms="FORMS") == "lists a host twice"


@pulumi.runtime.test
def test_domains_and_emails() -> None:
    assert check.domain_name(" API.Example.com. ") == "api.example.com" and check.domain_name("") == ""
    for bad in ("https://api.example.com", "api.example.com:443", "api.example.com/x", "localhost", "-a.example.com"):
        assert "expected a DNS name such as api.example.com" in _refused(check.domain_name, bad), bad
    assert check.email_address("ops+api@example.com") == "ops+api@example.com" and check.email_address("") == ""
    for bad in ("ops", "ops@", "@example.com", "ops@localhost", "o ps@example.com"):
        assert "expected an email address" in _refused(check.email_address, bad), bad


@pulumi.runtime.test
def test_urls_are_http_and_never_echoed() -> None:
    assert check.http_url(" https://h.example/x ") == "https://h.example/x"
    assert check.http_url("", allow_empty=True) == ""
    for bad in ("ftp://h.example/?token=t0k", "https:///nohost?token=t0k", "not a url t0k"):
        message = _refused(check.http_url, bad)
        assert message == "is not allowed; expected an http(s) URL" and "t0k" not in message
    assert _refused(check.http_url, "") == "is not allowed; expected an http(s) URL"


@pulumi.runtime.test
def test_names_addresses_and_executables() -> None:
    assert check.ip_address(" 127.0.0.1 ") == "127.0.0.1"
    assert check.ip_address("::1") == "::1"
    assert "not an IP address" in _refused(check.ip_address, "localhost")
    assert check.executable("valkey-server") == "valkey-server"
    assert "one executable name" in _refused(check.executable, "valkey-server --port 1")
    assert check.one_of("bridge", ("bridge", "host")) == "bridge"
    assert _refused(check.one_of, "overlay", ("bridge", "host")) == "'overlay' is not allowed; use one of: bridge, host"
    assert _refused(check.text_value, "  ") == "must not be empty"


@pulumi.runtime.test
def test_a_rule_names_the_key_it_concerns() -> None:
    with pytest.raises(ValidationError) as raised:
        HealthcheckSettings.model_validate(
            {
                "healthcheckInterval": "10s",
                "healthcheckTimeout": "10s",
                "healthcheckRetries": 3,
                "healthcheckStartPeriod": "0s",
                "healthcheckStartInterval": "",
            }
        )
    cause = raised.value.errors()[0]["ctx"]["error"]
    assert isinstance(cause, RuleViolation) and cause.key == "healthcheckTimeout"
