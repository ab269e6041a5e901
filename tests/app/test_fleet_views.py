"""The instance view is built from a stored record's own values (its nested models taken as they are; lists build up
to 100 views per request): every value must come out of the type the view declares (the serializer refuses any other
with `warnings="error"`), and the view exactly as one validated from the record's JSON form."""

from __future__ import annotations

import time

from app.fleet.schemas import (
    VIEW_FIELDS_FROM_RECORD,
    ConnectionDetails,
    ExposedPort,
    InstanceView,
)
from tests.app.lifecycle_helpers import make_record


def test_a_view_built_from_a_record_equals_the_validated_view() -> None:
    now = time.time()
    record = make_record(novita_instance_id="novita-1", novita_status="running", created_at=now - 3600)
    record.team, record.status_error, record.product_id, record.template_id = "ml", "", "p-1", "t-1"
    record.cluster_id, record.cluster_preference, record.last_job_id = "c-1", ["c-1", "c-2"], "job-1"
    record.env_keys, record.endpoints, record.ready_at = ["TOKEN"], [{"port": 8888, "endpoint": "x"}], now - 60
    record.price_per_hour = "0.67"
    record.billing_state, record.billing_since = "compute", now - 1800
    record.billed_seconds = {"compute": 60.0}
    record.connection = ConnectionDetails(
        ssh_command="ssh root@proxy.example -p 32787",
        ports=[ExposedPort(port=8888, type="http", endpoint="https://8888.example")],
    )
    record.add_event("created", "novita id novita-1", "job-1")
    # Every shared field holds a value, so the check below covers its type (a new field fails here until set).
    assert [name for name in VIEW_FIELDS_FROM_RECORD if getattr(record, name) in (None, [], {})] == []

    view = InstanceView.from_record(record, synced_at=now - 5, now=now)
    view.model_dump_json(warnings="error")  # raises if a value is not of the view's declared type
    validated = InstanceView.model_validate(view.model_dump(by_alias=True))

    assert view.model_dump_json() == validated.model_dump_json()
    shown = view.model_dump(by_alias=True)
    assert shown["billedSeconds"] == {"compute": 1860.0}  # the closed minute and the open half hour
    assert shown["costSoFar"] is not None and shown["managed"] is True and shown["syncedAt"] == now - 5
    assert shown["connection"]["sshCommand"] == "ssh root@proxy.example -p 32787"
    assert [event["action"] for event in shown["events"]] == ["created"]
