"""HTTPS for a domain under mocks: the Caddy front's rendered Caddyfile (checked by `caddy adapt`/`caddy validate`),
its container's standards, its certificates volume, and the config errors of the domain keys."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pulumi
import pytest

from components.config import StackConfigError
from components.tls_front import HEALTH_PROBE, CaddyConfig, render_caddyfile
from tests.infra.harness import ProgramRun
from tests.infra.test_edge_proxy import children_of, env_map

DOMAIN = "api.example.com"
PROD_DOMAIN = {"domain": DOMAIN, "acmeEmail": "ops@example.com"}


def caddy(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Debian's caddy (the tests' image runs the same build), with its state kept in `cwd`."""
    binary = shutil.which("caddy") or "/usr/bin/caddy"
    if not Path(binary).exists():
        pytest.fail("caddy is not installed: apt-get install caddy (.ci/run does)", pytrace=False)
    env = {**os.environ, "XDG_DATA_HOME": str(cwd / "data"), "XDG_CONFIG_HOME": str(cwd / "config"), "HOME": str(cwd)}
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=60, cwd=cwd, env=env)


def adapted(caddyfile: str, tmp_path: Path) -> dict:
    """The JSON config Caddy makes of a Caddyfile (what it would run)."""
    path = tmp_path / "Caddyfile"
    path.write_text(caddyfile)
    result = caddy("adapt", "--config", str(path), "--adapter", "caddyfile", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def routes_by_listener(config: dict) -> dict[str, list]:
    return {server["listen"][0]: server["routes"] for server in config["apps"]["http"]["servers"].values()}


def handlers(route: dict) -> list[dict]:
    """A route's handlers, through the subroute Caddy wraps a matched site in."""
    if route["handle"][0]["handler"] != "subroute":
        return route["handle"]
    return [handler for sub in route["handle"][0]["routes"] for handler in sub["handle"]]


@pulumi.runtime.test
def test_development_certificates_come_from_the_internal_ca(tmp_path: Path) -> None:
    config = adapted(render_caddyfile(CaddyConfig(DOMAIN, None, 443, "novita-gpu-api-proxy-dev:3003")), tmp_path)
    assert config["admin"] == {"disabled": True}
    (policy,) = config["apps"]["tls"]["automation"]["policies"]
    assert policy["subjects"] == [DOMAIN] and [issuer["module"] for issuer in policy["issuers"]] == ["internal"]
    assert config["apps"]["pki"]["certificate_authorities"]["local"]["install_trust"] is False
    routes = routes_by_listener(config)
    (https,) = routes[":8443"]
    assert https["match"] == [{"host": [DOMAIN]}]
    assert handlers(https) == [{"handler": "reverse_proxy", "upstreams": [{"dial": "novita-gpu-api-proxy-dev:3003"}]}]
    (redirect,) = routes[":8080"]
    assert handlers(redirect) == [
        {
            "handler": "static_response",
            "status_code": 308,
            "headers": {"Location": [f"https://{DOMAIN}{{http.request.uri}}"]},
        }
    ]
    (health,) = routes["127.0.0.1:8405"]
    assert handlers(health) == [{"handler": "static_response", "status_code": 200, "body": "ok"}]


@pulumi.runtime.test
def test_production_certificates_come_from_acme_with_the_contact_email(tmp_path: Path) -> None:
    config = adapted(render_caddyfile(CaddyConfig(DOMAIN, "ops@example.com", 8443, "proxy:3003")), tmp_path)
    policies = config["apps"]["tls"].get("automation", {}).get("policies", [])
    assert all(issuer["module"] != "internal" for policy in policies for issuer in policy.get("issuers", []))
    assert "pki" not in config["apps"]  # no internal CA
    assert json.dumps(config).count('"ops@example.com"') >= 1
    (redirect,) = routes_by_listener(config)[":8080"]
    assert handlers(redirect)[0]["headers"]["Location"] == [f"https://{DOMAIN}:8443{{http.request.uri}}"]


@pytest.mark.parametrize("production", [False, True])
@pulumi.runtime.test
def test_the_rendered_caddyfile_is_valid_for_caddy(production: bool, tmp_path: Path) -> None:
    path = tmp_path / "Caddyfile"
    path.write_text(render_caddyfile(CaddyConfig(DOMAIN, "ops@example.com" if production else None, 443, "proxy:3003")))
    result = caddy("validate", "--config", str(path), "--adapter", "caddyfile", cwd=tmp_path)
    assert result.returncode == 0 and "Valid configuration" in result.stdout + result.stderr, result.stderr


@pytest.mark.parametrize(
    "stack, overrides, issuer",
    [
        ("dev", {"domain": DOMAIN}, "tls internal"),
        ("prod", PROD_DOMAIN, "email ops@example.com"),
    ],
)
@pulumi.runtime.test
async def test_a_domain_puts_caddy_in_front_of_the_proxy(stack: str, overrides: dict, issuer: str) -> None:
    run = await ProgramRun.for_stack(stack, overrides).run()
    (front,) = children_of(run, "TlsFront")
    (proxy,) = children_of(run, "EdgeProxy")
    (volume,) = children_of(run, "TlsFront", "docker:index/volume:Volume")
    (image,) = children_of(run, "TlsFront", "docker:index/remoteImage:RemoteImage")
    replica = min(children_of(run, "ApiService"), key=lambda r: r.name)
    inputs = front.inputs
    caddyfile = env_map(front)["CADDYFILE"]
    assert caddyfile == render_caddyfile(
        CaddyConfig(DOMAIN, "ops@example.com" if stack == "prod" else None, 443, f"{proxy.inputs['name']}:3003")
    )
    assert issuer in caddyfile
    assert image.inputs == {"name": "caddy:2", "keepLocally": True} and inputs["image"].startswith("sha256:")
    assert inputs["name"] == "novita-gpu-api-tls" and volume.inputs["name"] == "novita-gpu-api-tls-data"
    assert inputs["volumes"] == [{"volumeName": "novita-gpu-api-tls-data", "containerPath": "/data"}]
    assert inputs["ports"] == [
        {"internal": 8443, "external": 443, "ip": "0.0.0.0"},
        {"internal": 8080, "external": 80, "ip": "0.0.0.0"},
    ]
    assert proxy.inputs["ports"] == [{"internal": 3003, "external": 3003, "ip": "127.0.0.1"}]  # unchanged: loopback
    assert inputs["networksAdvanced"] == proxy.inputs["networksAdvanced"]
    # The same standards as the API replicas and the proxy.
    assert inputs["restart"] == replica.inputs["restart"]
    assert inputs["healthcheck"] == {**proxy.inputs["healthcheck"], "tests": HEALTH_PROBE}
    assert (inputs["memory"], inputs["memorySwap"], inputs["cpus"]) == (128, 128, "0.5")
    assert (inputs["readOnly"], inputs["securityOpts"], inputs["capabilities"]) == (
        True,
        ["no-new-privileges:true"],
        {"drops": ["ALL"]},
    )
    assert (inputs["wait"], inputs["waitTimeout"], inputs["mustRun"]) == (True, replica.inputs["waitTimeout"], True)
    assert (inputs["stopTimeout"], inputs["destroyGraceSeconds"]) == (30, 30)
    assert inputs["logOpts"] == {"max-size": "10m", "max-file": "3"}
    assert inputs["labels"] == [
        {"label": "novita-gpu-api.role", "value": "tls"},
        {"label": "novita-gpu-api.stack", "value": stack},
    ]
    assert front.delete_before_replace is True
    assert run.outputs["httpsUrl"].value == f"https://{DOMAIN}"


@pulumi.runtime.test
async def test_without_a_domain_there_is_no_https_front() -> None:
    run = await ProgramRun.for_stack("prod").run()
    assert children_of(run, "TlsFront") == [] and run.outputs["httpsUrl"].value == ""


@pulumi.runtime.test
async def test_ports_address_image_and_name_are_settings() -> None:
    run = await ProgramRun.for_stack(
        "dev",
        {
            "domain": DOMAIN,
            "httpsPort": "8443",
            "httpPort": "8080",
            "publicAddress": "127.0.0.1",
            "tlsImage": "novita-gpu-api/caddy-test:bookworm",
            "tlsPullImage": "false",
            "tlsContainerName": "edge-tls",
        },
    ).run()
    (front,) = children_of(run, "TlsFront")
    assert children_of(run, "TlsFront", "docker:index/remoteImage:RemoteImage") == []
    assert front.inputs["image"] == "novita-gpu-api/caddy-test:bookworm" and front.inputs["name"] == "edge-tls"
    assert front.inputs["ports"] == [
        {"internal": 8443, "external": 8443, "ip": "127.0.0.1"},
        {"internal": 8080, "external": 8080, "ip": "127.0.0.1"},
    ]
    assert f"redir https://{DOMAIN}:8443{{uri}} 308" in env_map(front)["CADDYFILE"]
    assert run.outputs["httpsUrl"].value == f"https://{DOMAIN}:8443"


@pytest.mark.parametrize(
    "stack, config, key, message",
    [
        ("prod", {"domain": DOMAIN}, "acmeEmail", "required with domain in production"),
        ("dev", {"domain": "https://api.example.com"}, "domain", "expected a DNS name such as api.example.com"),
        ("dev", {"domain": "localhost"}, "domain", "expected a DNS name"),
        ("prod", {**PROD_DOMAIN, "acmeEmail": "ops"}, "acmeEmail", "expected an email address"),
        ("dev", {"domain": DOMAIN, "httpPort": "443"}, "httpPort", "must differ from httpsPort (443)"),
        ("dev", {"domain": DOMAIN, "httpsPort": "70000"}, "httpsPort", "between 1 and 65535"),
        ("dev", {"domain": DOMAIN, "publicAddress": "everywhere"}, "publicAddress", "not an IP address"),
        ("dev", {"domain": DOMAIN, "networkMode": "host"}, "domain", "needs networkMode bridge"),
    ],
)
@pulumi.runtime.test
async def test_bad_domain_config_names_the_key(stack: str, config: dict, key: str, message: str) -> None:
    with pytest.raises(StackConfigError, match=rf"novita-gpu-api:{key}: .*{re.escape(message)}"):
        await ProgramRun.for_stack(stack, config).run()
