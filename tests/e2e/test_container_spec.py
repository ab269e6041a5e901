"""The mapping from the program's rendered container to the Docker Engine API (no engine needed)."""

from __future__ import annotations

import pytest

from tests.e2e.container_spec import MB, UnmappedInputError, container_spec, duration_ns
from tests.e2e.harness import render

RENDERED_PROD_OVERRIDES = {"networkMode": "host", "apiReplicas": "1", "valkeyMode": "local", "valkeyPullImage": "false"}


@pytest.fixture(scope="module")
def prod_container_inputs() -> dict:
    return render("prod", RENDERED_PROD_OVERRIDES).api_container()["inputs"]


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("30s", 30 * 10**9),
        ("2m0s", 120 * 10**9),
        ("1m30s", 90 * 10**9),
        ("500ms", 500 * 10**6),
        ("0s", 0),
        ("1.5s", 1_500_000_000),
    ],
)
def test_duration_ns(text, ns):
    assert duration_ns(text) == ns


@pytest.mark.parametrize("text", ["", "30", "thirty seconds", "5d"])
def test_duration_ns_rejects_non_go_durations(text):
    with pytest.raises(ValueError, match="not a Go duration"):
        duration_ns(text)


def test_prod_container_maps_every_declared_value(prod_container_inputs):
    spec = container_spec(prod_container_inputs)
    host, create = spec.host_config_kwargs, spec.create_kwargs
    assert host["restart_policy"] == {"Name": "always", "MaximumRetryCount": 0}
    assert (host["mem_limit"], host["memswap_limit"], host["nano_cpus"]) == (512 * MB, 512 * MB, 500_000_000)
    assert create["healthcheck"] == {
        "test": ["CMD", "python", "-m", "app.healthcheck"],
        "interval": 30 * 10**9,
        "timeout": 10 * 10**9,
        "start_period": 120 * 10**9,
        "retries": 5,
    }
    assert host["init"] is True and host["read_only"] is True and host["network_mode"] == "host"
    assert host["cap_drop"] == ["ALL"] and host["security_opt"] == ["no-new-privileges:true"]
    assert [(u["Name"], u["Soft"], u["Hard"]) for u in host["ulimits"]] == [("nproc", 256, 256)]
    assert host["log_config"]["Type"] == "json-file" and host["log_config"]["Config"]["max-size"] == "10m"
    assert (create["user"], create["stop_signal"], create["stop_timeout"]) == ("10001:10001", "SIGTERM", 30)
    assert "APP_ENV=production" in create["environment"]
    assert (spec.provider.wait_for_healthy, spec.provider.wait_timeout_seconds) == (True, 300)


def test_an_input_without_mapping_fails_loudly(prod_container_inputs):
    with pytest.raises(UnmappedInputError, match="'gpus'"):
        container_spec({**prod_container_inputs, "gpus": "all"})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"healthcheck": {"tests": ["CMD", "true"], "startInterval": "2s"}}, "startInterval needs Docker API 1.44"),
        ({"healthcheck": {"tests": ["CMD", "true"], "startPeriodX": "2s"}}, "startPeriodX"),
        ({"capabilities": {"drops": ["ALL"], "bogus": []}}, "bogus"),
    ],
)
def test_unknown_nested_values_fail_loudly(prod_container_inputs, change, message):
    with pytest.raises(UnmappedInputError, match=message):
        container_spec({**prod_container_inputs, **change})


def test_companion_input_alone_is_not_dropped(prod_container_inputs):
    inputs = dict(prod_container_inputs)
    del inputs["logDriver"]
    with pytest.raises(UnmappedInputError, match="logOpts"):
        container_spec(inputs)


def test_bridge_mode_replicas_and_proxy_map_their_network_and_published_port():
    rendered = render("prod", {"valkeyMode": "local", "valkeyPullImage": "false", "proxyPullImage": "false"})
    containers = {c["name"]: c["inputs"] for c in rendered.of_type("docker:index/container:Container")}
    replica = container_spec(containers["novita-gpu-instance-api-1"], auto_name="novita-gpu-instance-api-1-test")
    assert replica.name == "novita-gpu-instance-api-1-test"  # auto-named by Pulumi; the harness stands in for it
    assert replica.network == ("novita-gpu-api-prod", ["api-replicas"])
    assert "port_bindings" not in replica.host_config_kwargs
    proxy = container_spec(containers["proxy-container"])
    assert proxy.network == ("novita-gpu-api-prod", [])
    assert (proxy.create_kwargs["ports"], proxy.host_config_kwargs["port_bindings"]) == (
        [3003],
        {3003: ("127.0.0.1", 3003)},
    )
    with pytest.raises(UnmappedInputError, match="exactly one network"):
        container_spec({**containers["proxy-container"], "networksAdvanced": [{"name": "a"}, {"name": "b"}]})
