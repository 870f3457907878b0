"""Keys the workers leave in Redis expire: a finished job leaves nothing behind for good."""

from __future__ import annotations

import uuid

import redis

from imgbatch.worker.ledger import CURSOR_TTL_S, Ledger


def test_a_jobs_cursor_expires(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    ledger = Ledger(client, f"test-{uuid.uuid4().hex[:8]}")
    ledger.set_cursor("job-1", 42)
    assert ledger.cursor("job-1") == 42
    ttl = client.ttl(ledger.key("cursor", "job-1"))
    assert 0 < ttl <= CURSOR_TTL_S
    ledger.forget_job("job-1")
    assert client.exists(ledger.key("cursor", "job-1")) == 0
