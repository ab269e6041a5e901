"""HTTP API of instances: thin, every rule lives in `InstanceService`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Query, Response, status
from pydantic import BaseModel

from app.access.auth import AdminCaller, OperateCaller, ReadCaller, authenticate
from app.access.principal import Principal
from app.access.schemas import TeamName
from app.core.deps import provide
from app.core.openapi import AUTHENTICATED_RESPONSES, Responses, accepted_response, problem
from app.core.schemas import StrictRequestModel
from app.fleet.actions import Action
from app.fleet.schemas import (
    AcceptedResponse,
    CreateInstanceRequest,
    HeartbeatView,
    InstancePage,
    InstanceState,
    InstanceView,
)
from app.instances.service import InstanceService
from app.jobs.queue import LISTED_JOBS_KEPT
from app.jobs.router import JobView

router = APIRouter(
    prefix="/api/instances",
    tags=["instances"],
    dependencies=[Depends(authenticate)],
    responses=AUTHENTICATED_RESPONSES,
)

InstanceId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]

_NOT_FOUND: Responses = {404: problem("no instance with this id")}
_CONFLICT: Responses = {
    409: problem("the instance's current state does not allow this action, or (start) the team's budget")
}
_ACTION_RESPONSES: Responses = {**accepted_response("queued: follow the job at `Location`"), **_NOT_FOUND, **_CONFLICT}


Service = Annotated[InstanceService, Depends(provide(InstanceService))]


def _accepted(response: Response, accepted: AcceptedResponse) -> AcceptedResponse:
    response.headers["Location"] = f"/api/jobs/{accepted.job_id}"
    return accepted


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=AcceptedResponse,
    responses={
        **accepted_response("accepted: the create job is durably queued; follow it at `Location`"),
        409: problem("the team's budget does not allow it: `budget`, `limit` and `current` say which and why"),
        422: problem("invalid body, or an Idempotency-Key reused with a different body"),
    },
)
async def create_instance(
    body: CreateInstanceRequest,
    service: Service,
    response: Response,
    caller: OperateCaller,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> AcceptedResponse:
    """Queue the creation of an instance, owned by the key's team; 202 once the job is durably written.

    With an `Idempotency-Key` header, repeating the request returns the same instance and job and creates nothing
    twice; reusing the key with a different body is a 422.
    """
    return _accepted(response, await service.create(body, idempotency_key, caller))


@router.get("", response_model=InstancePage)
async def list_instances(
    service: Service,
    caller: ReadCaller,
    state: Annotated[InstanceState | None, Query(alias="status", description="our state, e.g. running")] = None,
    name: Annotated[str | None, Query(max_length=255, description="case-insensitive substring")] = None,
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
    page_size: Annotated[int, Query(alias="pageSize", ge=1, le=100)] = 20,
    cursor: Annotated[
        str | None, Query(max_length=200, description="`nextCursor` of the previous page; replaces `page`")
    ] = None,
) -> InstancePage:
    """The key's team's instances (every instance for an admin) from our index, newest first, as the background sync
    last saw them on Novita (`syncedAt`); admins also see instances made outside this service (`managed: false`)."""
    return await service.list_instances(caller, state=state, name=name, page=page, page_size=page_size, cursor=cursor)


@router.get("/{instance_id}", response_model=InstanceView, responses=_NOT_FOUND)
async def get_instance(instance_id: InstanceId, service: Service, caller: ReadCaller) -> InstanceView:
    """One instance, with Novita's live status when Novita answers."""
    return await service.get(instance_id, caller)


class InstanceJobList(BaseModel):
    """Answer of `GET /api/instances/{id}/jobs`, newest first."""

    items: list[JobView]


@router.get("/{instance_id}/jobs", response_model=InstanceJobList, responses=_NOT_FOUND)
async def list_instance_jobs(
    instance_id: InstanceId,
    service: Service,
    caller: ReadCaller,
    limit: Annotated[int, Query(ge=1, le=LISTED_JOBS_KEPT)] = 50,
) -> InstanceJobList:
    """Every job queued for the instance (create, start, stop, restart, delete, readiness checks), newest first:
    the newest 100 are kept, each while its record is retained (`JOB_RETENTION_SECONDS` after it finished)."""
    return InstanceJobList(items=[JobView.of(job) for job in await service.jobs(instance_id, limit, caller)])


async def _action(
    instance_id: str, action: Action, service: InstanceService, response: Response, caller: Principal
) -> AcceptedResponse:
    return _accepted(response, await service.request_action(instance_id, action, caller))


@router.post("/{instance_id}/start", status_code=202, response_model=AcceptedResponse, responses=_ACTION_RESPONSES)
async def start_instance(
    instance_id: InstanceId, service: Service, response: Response, caller: OperateCaller
) -> AcceptedResponse:
    """Queue a start of a stopped instance."""
    return await _action(instance_id, "start", service, response, caller)


@router.post("/{instance_id}/stop", status_code=202, response_model=AcceptedResponse, responses=_ACTION_RESPONSES)
async def stop_instance(
    instance_id: InstanceId, service: Service, response: Response, caller: OperateCaller
) -> AcceptedResponse:
    """Queue a stop of a running instance."""
    return await _action(instance_id, "stop", service, response, caller)


@router.post("/{instance_id}/restart", status_code=202, response_model=AcceptedResponse, responses=_ACTION_RESPONSES)
async def restart_instance(
    instance_id: InstanceId, service: Service, response: Response, caller: OperateCaller
) -> AcceptedResponse:
    """Queue a restart of a running instance."""
    return await _action(instance_id, "restart", service, response, caller)


@router.delete("/{instance_id}", status_code=202, response_model=AcceptedResponse, responses=_ACTION_RESPONSES)
async def delete_instance(
    instance_id: InstanceId, service: Service, response: Response, caller: OperateCaller
) -> AcceptedResponse:
    """Queue the deletion of an instance (its data on Novita is lost)."""
    return await _action(instance_id, "delete", service, response, caller)


@router.post("/{instance_id}/heartbeat", response_model=HeartbeatView, responses={**_NOT_FOUND, **_CONFLICT})
async def heartbeat(instance_id: InstanceId, service: Service, caller: OperateCaller) -> HeartbeatView:
    """Say the instance is in use: idle auto-stop stops instances without a heartbeat for AUTO_STOP_IDLE_SECONDS."""
    return await service.heartbeat(instance_id, caller)


class OwnerChange(StrictRequestModel):
    """`PUT /api/instances/{id}/owner`: the team that owns the instance from now on (null: unowned, admins only)."""

    team: TeamName | None


@router.put("/{instance_id}/owner", response_model=InstanceView, responses=_NOT_FOUND)
async def set_owner(instance_id: InstanceId, body: OwnerChange, service: Service, _caller: AdminCaller) -> InstanceView:
    """Give an instance to a team (admins): it then shows in that team's lists and answers its keys."""
    return await service.set_owner(instance_id, body.team)
