"""The name order of the list index (the dashboard's sort by name), on the real redis-server: the page script sorts
the (filtered) set by the names hash inside Valkey, and its pages agree with a brute-force sort of every record."""

from __future__ import annotations

import random

from app.fleet.schemas import InstanceRecord, InstanceState
from tests.app.lifecycle_helpers import LifecycleEnv, make_record

NAMES = ("trainer", "Notebook", "gpu-box", "TRAINER-big", "infer")
NOVITA_STATUSES = (None, "running", "running", "exited")
BASE_TIME = 1_700_000_000.0


def _by_name(records: list[InstanceRecord], state: InstanceState | None, name: str | None) -> list[str]:
    """Case-folded name, then newest first, then id descending (the script's tie-breaks)."""
    needle = name.casefold() if name else None
    matching = [
        r for r in records if (state is None or r.state == state) and (needle is None or needle in r.name.casefold())
    ]
    by_id = sorted(matching, key=lambda r: r.id, reverse=True)
    return [r.id for r in sorted(by_id, key=lambda r: (r.name.casefold(), -r.created_at))]


async def test_name_order_pages_agree_with_a_brute_force_sort(lifecycle_env: LifecycleEnv) -> None:
    env = lifecycle_env
    rng = random.Random(14)
    for position in range(1100):  # more than one 1,000-member chunk of the script's names read
        status = rng.choice(NOVITA_STATUSES)
        record = make_record(
            name=f"{rng.choice(NAMES)}-{rng.randint(0, 40)}",  # names and creation times collide often
            novita_status=status,
            novita_instance_id=f"nv{position:05d}" if status else None,
            created_at=BASE_TIME + rng.randint(0, 200),
        )
        assert await env.store.create(record, {})
    current = await env.store.list_all()

    for state in (None, InstanceState.RUNNING, InstanceState.STOPPED):
        for name in (None, "train", "nothing-matches"):
            expected = _by_name(current, state, name)
            paged: list[str] = []
            for offset in range(0, len(expected) + 25, 25):
                page = await env.store.page(state=state, name=name, offset=offset, count=25, order="name")
                assert page.total == len(expected), (state, name)
                paged.extend(page.members)
            assert paged == expected, (state, name)
    assert len(_by_name(current, InstanceState.RUNNING, None)) > 100  # the filters left real work
