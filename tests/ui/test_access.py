"""The dashboard follows the API's rules (no browser needed): a session acts as its key's principal, a `read` key is
offered no action and its forged POSTs are 403, and another team's instances and jobs are not found. Every route of
`/ui` is walked from the app's route table, so a new page is covered (or this test fails) automatically."""

from __future__ import annotations

import re
from collections.abc import Callable

import httpx
from fastapi.routing import iter_route_contexts

from tests.app.conftest import ApiServer, StartServer
from tests.app.instances_client import create_running

Call = Callable[[httpx.Client, str, str, str], httpx.Response]  # (client, csrf token, instance id, job id)


def _post(path: str) -> Call:
    return lambda c, csrf, instance, job: c.post(path.format(id=instance), data={"csrf_token": csrf})


ADMIN_KEY_ID = "0123456789abcdef"  # a well-formed key id: the scope is refused before the key is looked up
# Every route of /ui, called on another team's instance and job: the status a `read` key of team alpha gets, and the
# one an `operate` key of alpha gets. Sign-in and sign-out are the same for every key (they are not walked).
UI_ROUTES: dict[tuple[str, str], tuple[Call, int, int]] = {
    ("get", "/ui"): (lambda c, csrf, i, j: c.get("/ui"), 303, 303),
    ("get", "/ui/instances"): (lambda c, csrf, i, j: c.get("/ui/instances"), 200, 200),
    ("get", "/ui/instances/rows"): (lambda c, csrf, i, j: c.get("/ui/instances/rows"), 200, 200),
    ("get", "/ui/instances/new"): (lambda c, csrf, i, j: c.get("/ui/instances/new"), 403, 200),
    ("post", "/ui/instances"): (_post("/ui/instances"), 403, 422),  # scope first; an empty form is then a 422
    ("get", "/ui/instances/{instance_id}"): (lambda c, csrf, i, j: c.get(f"/ui/instances/{i}"), 404, 404),
    ("get", "/ui/instances/{instance_id}/panel"): (lambda c, csrf, i, j: c.get(f"/ui/instances/{i}/panel"), 404, 404),
    ("get", "/ui/instances/{instance_id}/delete"): (
        lambda c, csrf, i, j: c.get(f"/ui/instances/{i}/delete"),
        403,
        404,
    ),
    ("post", "/ui/instances/{instance_id}/delete"): (_post("/ui/instances/{id}/delete"), 403, 404),
    ("post", "/ui/instances/{instance_id}/heartbeat"): (_post("/ui/instances/{id}/heartbeat"), 403, 404),
    ("post", "/ui/instances/{instance_id}/{action}"): (_post("/ui/instances/{id}/stop"), 403, 404),
    ("get", "/ui/jobs"): (lambda c, csrf, i, j: c.get("/ui/jobs", params={"id": j}), 200, 200),
    ("get", "/ui/costs"): (lambda c, csrf, i, j: c.get("/ui/costs"), 200, 200),
    ("get", "/ui/budgets"): (lambda c, csrf, i, j: c.get("/ui/budgets"), 403, 403),
    ("post", "/ui/budgets"): (_post("/ui/budgets"), 403, 403),
    ("get", "/ui/keys"): (lambda c, csrf, i, j: c.get("/ui/keys"), 403, 403),
    ("post", "/ui/keys"): (_post("/ui/keys"), 403, 403),
    ("get", "/ui/keys/{key_id}/revoke"): (lambda c, csrf, i, j: c.get(f"/ui/keys/{ADMIN_KEY_ID}/revoke"), 403, 403),
    ("post", "/ui/keys/{key_id}/revoke"): (_post(f"/ui/keys/{ADMIN_KEY_ID}/revoke"), 403, 403),
    ("get", "/ui/jobs/panel"): (lambda c, csrf, i, j: c.get("/ui/jobs/panel", params={"id": j}), 200, 200),
    ("post", "/ui/jobs/{job_id}/{operation}"): (
        lambda c, csrf, i, j: c.post(f"/ui/jobs/{j}/cancel", data={"csrf_token": csrf}),
        403,
        404,
    ),
}
NOT_WALKED = {("get", "/ui/login"), ("post", "/ui/login"), ("post", "/ui/logout")}


def _csrf(client: httpx.Client) -> str:
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/ui/instances").text)
    assert token is not None
    return token.group(1)


def test_every_dashboard_route_follows_scopes_and_teams(api_server_factory: StartServer) -> None:
    server: ApiServer = api_server_factory()
    ui_routes = {
        (method.lower(), route.path)
        for route in iter_route_contexts(server.app.routes)
        if route.path and route.path.startswith("/ui") and not route.path.startswith("/ui/static")
        for method in route.methods or ()
    }
    assert ui_routes == set(UI_ROUTES) | NOT_WALKED, "a new dashboard route: add its case to UI_ROUTES"
    with server.client(key=server.new_key("bravo", "operate")) as bravo:
        other = create_running(bravo, name="theirs")
    with server.client(key=server.new_key("alpha", "operate")) as alpha:
        own = create_running(alpha, name="ours")
    reader, operator = server.dashboard(server.new_key("alpha", "read")), server.dashboard(server.new_key("alpha"))
    try:
        for client, column in ((reader, 1), (operator, 2)):
            csrf = _csrf(client)
            for (method, path), case in UI_ROUTES.items():
                answer = case[0](client, csrf, other["id"], other["lastJobId"])
                assert answer.status_code == case[column], (method, path, column, answer.text[:300])
                assert "theirs" not in answer.text, (method, path)  # bravo's instance never shows
                if answer.status_code == 403:
                    needed = "admin" if path.startswith(("/ui/budgets", "/ui/keys")) else "operate"
                    assert f"this needs the &#39;{needed}&#39; scope" in answer.text, (method, path)
            jobs = client.get("/ui/jobs", params={"id": other["lastJobId"]})
            assert f"No job with id <code>{other['lastJobId']}</code>" in jobs.text  # as if it did not exist

        read_page = reader.get(f"/ui/instances/{own['id']}")
        operate_page = operator.get(f"/ui/instances/{own['id']}")
        listing = reader.get("/ui/instances")
    finally:
        reader.close()
        operator.close()
    assert read_page.status_code == 200 and operate_page.status_code == 200
    assert 'action="/ui/instances/' not in read_page.text and "/delete" not in read_page.text  # no action offered
    assert "only read" in read_page.text
    assert f'action="/ui/instances/{own["id"]}/stop"' in operate_page.text
    assert "ours" in listing.text and 'href="/ui/instances/new"' not in listing.text
    assert 'href="/ui/keys"' not in listing.text and 'href="/ui/budgets"' not in listing.text  # admin pages unlinked
