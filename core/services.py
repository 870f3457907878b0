"""Reachability checks of the shared services, for every command and stage that needs one.

Kept in the kernel so that the producer and the commands can ping Redis without importing the worker.
"""

from __future__ import annotations

import redis

from imgbatch.core.errors import UserError
from imgbatch.core.urls import check_redis_url, redact_url


def check_redis(url: str) -> None:
    """Fail fast with one line if the broker is unreachable, before anything is recorded."""
    url = check_redis_url(url)
    try:
        redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3).ping()
    except (redis.exceptions.RedisError, OSError, ValueError) as exc:
        raise UserError(f"cannot reach Redis at {redact_url(url)}: {exc}") from exc
