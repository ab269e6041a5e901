"""The Valkey key prefix the lifecycle automations share.

Each automation does its work once across replicas through `app.core.redis.Lease`.
"""

from __future__ import annotations

KEY_PREFIX = "ngpu:lifecycle:"
