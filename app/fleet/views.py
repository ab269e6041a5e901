"""How an instance looks in the API when Novita's view of it is folded in, and its name on Novita."""

from __future__ import annotations

from typing import Any

from app.fleet.schemas import ConnectionDetails, ExposedPort, InstanceState, InstanceView, state_from_novita
from app.novita.models import Instance


def upstream_name(name: str, record_id: str) -> str:
    """The instance's name on Novita: unique, and findable from our record alone after an ambiguous create."""
    return f"{name}-{record_id}"


def _endpoints(live: Instance) -> list[dict[str, Any]]:
    return [m.model_dump() for m in live.port_mappings if m.endpoint]


def connection_details(live: Instance) -> ConnectionDetails:
    """What a person needs to use the machine, from Novita's instance data (blank values left out)."""
    ssh = live.connect_component_ssh
    jupyter = live.connect_component_jupyter
    terminal = live.connect_component_web_terminal
    return ConnectionDetails(
        ssh_command=(ssh.ssh_command or None) if ssh else None,
        jupyter_url=(jupyter.address or None) if jupyter else None,
        web_terminal_url=(terminal.address or None) if terminal else None,
        ports=[ExposedPort(port=m.port, type=m.type, endpoint=m.endpoint) for m in live.port_mappings if m.endpoint],
    )


def overlay(view: InstanceView, live: Instance) -> InstanceView:
    """`view` with Novita's current status, cluster and endpoints.

    A failure we decided (provisioning timeout, no capacity) stays visible while Novita reports no error itself.
    """
    error = live.error_text
    if view.state == InstanceState.FAILED and error is None:
        state, error = InstanceState.FAILED, view.status_error
    else:
        state = state_from_novita(live.status, error)
    return view.model_copy(
        update={
            "state": state,
            "novita_status": live.status,
            "status_error": error,
            "cluster_id": live.cluster_id or view.cluster_id,
            "endpoints": _endpoints(live) or view.endpoints,
            "ready_at": view.ready_at if state == InstanceState.RUNNING else None,
            "connection": connection_details(live),
        }
    )


def external_view(live: Instance) -> InstanceView:
    """An instance on the Novita account that this service did not create."""
    error = live.error_text
    return InstanceView(
        id=None,
        managed=False,
        name=live.name,
        novita_instance_id=live.id,
        state=state_from_novita(live.status, error),
        novita_status=live.status,
        status_error=error,
        product_id=live.product_id,
        product_name=live.product_name,
        gpu_num=live.gpu_num,
        rootfs_size=live.rootfs_size,
        cluster_id=live.cluster_id,
        billing_mode=live.billing_mode,
        image_url=live.image_url,
        env_keys=[env.key for env in live.envs],
        endpoints=_endpoints(live),
        connection=connection_details(live),
    )
