"""HTTPS for a domain on the real engine: the Caddy front the program renders, with its internal CA (dev), in front of
the edge proxy. The test process talks to 127.0.0.1 only, giving the domain as TLS server name and Host header; the
internal CA's root certificate is read out of the container with `docker cp` (the engine's archive API)."""

from __future__ import annotations

import http.client
import io
import socket
import ssl
import tarfile

import docker

from components.tls_front import INTERNAL_ROOT_CERT
from tests.e2e.harness import WaitTimeout, wait_for
from tests.e2e.proxied import API_KEY, ProxiedDeployment
from tests.loopback import free_port

DOMAIN = "api.e2e.test"


def root_certificate(client: docker.DockerClient, container_id: str) -> str:
    """The internal CA's root certificate (PEM), copied out of the container."""
    stream, _ = client.api.get_archive(container_id, INTERNAL_ROOT_CERT)
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as archive:
        (member,) = archive.getmembers()
        certificate = archive.extractfile(member)
        assert certificate is not None, f"{INTERNAL_ROOT_CERT} is not a file"
        return certificate.read().decode()


def https_get(
    port: int, path: str, context: ssl.SSLContext, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    """GET over TLS to 127.0.0.1:port, with the domain as server name (SNI, certificate check) and Host."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=DOMAIN) as tls,
    ):
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: {DOMAIN}",
            "Connection: close",
            *(f"{name}: {value}" for name, value in (headers or {}).items()),
        ]
        tls.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        response = http.client.HTTPResponse(tls)
        response.begin()
        return response.status, response.read()


def test_the_domain_is_served_over_https_with_the_internal_ca_and_http_redirects(
    docker_client: docker.DockerClient,
    proxied_deploy,
) -> None:
    https_port, http_port = free_port(), free_port()
    deployment: ProxiedDeployment = proxied_deploy(
        "dev",
        replicas=1,
        overrides={
            "domain": DOMAIN,
            "httpsPort": str(https_port),
            "httpPort": str(http_port),
            "publicAddress": "127.0.0.1",
        },
    )
    assert deployment.tls is not None and deployment.tls.health() == "healthy"
    trusted = ssl.create_default_context(cadata=root_certificate(docker_client, deployment.tls.container_id))

    def answers() -> bool:
        try:
            return https_get(https_port, "/livez", trusted)[0] == 200
        except (OSError, ssl.SSLError, http.client.HTTPException):
            return False

    try:
        wait_for("HTTPS for the domain through the proxy", answers, 60)
    except WaitTimeout as error:
        raise AssertionError(f"{error}\nCaddy's log:\n{deployment.tls.logs()[-3000:]}") from None
    status, body = https_get(https_port, "/api/products", trusted, {"X-API-Key": API_KEY})
    assert status == 200, body[:300]

    # The certificate is the internal CA's: a client that trusts only the system CAs refuses it.
    untrusted = ssl.create_default_context()
    try:
        https_get(https_port, "/livez", untrusted)
    except ssl.SSLCertVerificationError:
        pass
    else:
        raise AssertionError("a client without the internal CA's root accepted the certificate")

    # HTTP redirects to HTTPS on the published port, keeping the path.
    connection = http.client.HTTPConnection("127.0.0.1", http_port, timeout=10)
    connection.request("GET", "/livez?probe=1", headers={"Host": DOMAIN})
    response = connection.getresponse()
    assert response.status == 308
    assert response.getheader("Location") == f"https://{DOMAIN}:{https_port}/livez?probe=1"
    connection.close()
