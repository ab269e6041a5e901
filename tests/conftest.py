"""Fixtures shared by every test package: real servers started by the tests themselves."""

from tests.fakes.fixtures import fake_novita, manual_clock, novita  # noqa: F401  (the fake Novita server)
from tests.fixtures_redis import redis_server, redis_tls_server  # noqa: F401  (real redis-server processes)
