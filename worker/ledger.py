"""What the workers share in Redis besides the queue: the in-flight ledger, the dispatcher's cursors,
heartbeats, decode markers and per-image counters. All keys are namespaced by the queue name.

The database is the truth (an image is pending until its result row is committed); these keys only
say what is on its way. Losing all of them (Redis restarted empty, which loses the queue too) is
safe: the dispatcher then finds no cursor and nothing in flight and sends every pending image again.

- ``ledger:<job>``  batch id -> the batch (items, attempt, when sent or not before when to send)
- ``claims:<job>``  batch id -> "node started_at": the worker whose pool process started it
- ``cursor:<job>``  highest image id sent in the dispatcher's current sweep over the job
- ``markers:<job>`` image id -> the pool process decoding it right now (left behind if it died)
- ``kills:<job>``, ``attempts:<job>``  image id -> decodes that died / transient failures so far
- ``hb:<node>``     a worker's heartbeat (TTL) with its pool processes' pids
- ``problem:<node>`` why a worker cannot do a job's batches (TTL), for `status` and `submit --wait`
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import redis

# Compare-and-delete of a leftover marker that counts one death: two workers given the same
# redelivered batch count it once.
_CONSUME_MARKER = """
if redis.call('hget', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('hdel', KEYS[1], ARGV[1])
  return redis.call('hincrby', KEYS[2], ARGV[1], 1)
end
return 0
"""


CURSOR_TTL_S = 24 * 3600


@dataclass
class Entry:
    """One batch on its way: sent at `sent_at`, or waiting (sent_at 0) to be sent at `not_before`."""

    batch_id: str
    items: list[list[Any]]
    attempt: int = 1
    sent_at: float = 0.0
    not_before: float = 0.0

    def to_json(self) -> str:
        return json.dumps(
            {"items": self.items, "attempt": self.attempt, "sent": self.sent_at, "nb": self.not_before}
        )

    @classmethod
    def from_json(cls, batch_id: str, text: str | bytes) -> Entry:
        data = json.loads(text)
        return cls(batch_id, data["items"], int(data["attempt"]), float(data["sent"]), float(data["nb"]))

    @classmethod
    def deferred(cls, items: list[list[Any]], delay_s: float, attempt: int = 1) -> Entry:
        return cls(uuid.uuid4().hex, items, attempt, 0.0, time.time() + delay_s)


@dataclass(frozen=True)
class Claim:
    node: str
    started_at: float


@dataclass(frozen=True)
class Marker:
    """A pool process decoding an image: written before the read, cleared after the decode."""

    raw: str
    node: str
    host: str
    pid: int
    started_at: float

    @classmethod
    def parse(cls, raw: str) -> Marker:
        data = json.loads(raw)
        return cls(raw, data["node"], data["host"], int(data["pid"]), float(data["at"]))


@dataclass
class InFlight:
    entries: dict[str, Entry] = field(default_factory=dict)
    claims: dict[str, Claim] = field(default_factory=dict)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class Ledger:
    """The shared state of one queue's workers, on one Redis client."""

    def __init__(self, client: redis.Redis, queue: str) -> None:
        self.client = client
        self.queue = queue
        self.prefix = f"imgbatch:{queue}:"
        self._consume = client.register_script(_CONSUME_MARKER)

    @classmethod
    def from_url(cls, url: str, queue: str) -> Ledger:
        return cls(redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5), queue)

    def key(self, kind: str, name: str = "") -> str:
        return f"{self.prefix}{kind}:{name}" if name else f"{self.prefix}{kind}"

    def job_keys(self, job_id: str) -> list[str]:
        kinds = ("ledger", "claims", "cursor", "markers", "kills", "attempts")
        return [self.key(kind, job_id) for kind in kinds]

    def _int(self, value: Any) -> int:
        return int(cast(Any, value) or 0)

    # ------------------------------------------------------------------ dispatcher
    def in_flight(self, job_id: str) -> InFlight:
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(self.key("ledger", job_id))
        pipe.hgetall(self.key("claims", job_id))
        entries, claims = pipe.execute()
        found = InFlight()
        for bid, text in entries.items():
            found.entries[_text(bid)] = Entry.from_json(_text(bid), text)
        for bid, text in claims.items():
            node, _, started = _text(text).rpartition(" ")
            found.claims[_text(bid)] = Claim(node, float(started))
        return found

    def record_sent(self, job_id: str, entry: Entry) -> None:
        """Put `entry` in the ledger as sent now and unclaimed."""
        entry.sent_at = time.time()
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self.key("ledger", job_id), entry.batch_id, entry.to_json())
        pipe.hdel(self.key("claims", job_id), entry.batch_id)
        pipe.execute()

    def set_cursor(self, job_id: str, cursor: int) -> None:
        # Renewed with every batch sent. A job finished by a pool process is no longer active, so no
        # dispatcher forgets its keys: the cursor must not stay in Redis forever. Losing it early is
        # safe (a new sweep), and a day is far longer than any pause between two sends of a job.
        self.client.set(self.key("cursor", job_id), cursor, ex=CURSOR_TTL_S)

    def drop(self, job_id: str, batch_id: str) -> None:
        self.client.hdel(self.key("ledger", job_id), batch_id)

    def cursor(self, job_id: str) -> int:
        return self._int(self.client.get(self.key("cursor", job_id)))

    def reset_cursor(self, job_id: str) -> None:
        """Start a new sweep over the job's pending images (what `resume` asks for)."""
        self.client.delete(self.key("cursor", job_id))

    def forget_job(self, job_id: str) -> None:
        """Every key of a finished, cancelled or deleted job."""
        self.client.delete(*self.job_keys(job_id))

    def queue_length(self) -> int:
        return self._int(self.client.llen(self.queue))

    def _scan(self, kind: str) -> Iterable[tuple[str, Any]]:
        """(name, value) of every `kind:name` key."""
        prefix = self.key(kind) + ":"
        keys = [_text(k) for k in self.client.scan_iter(match=prefix + "*", count=500)]
        values = self.client.mget(keys) if keys else []
        for key, value in zip(keys, cast(list[Any], values), strict=True):
            if value is not None:
                yield key.removeprefix(prefix), value

    def alive_nodes(self) -> dict[str, list[int]]:
        """Workers with a heartbeat: node -> the pids of its pool processes."""
        return {node: json.loads(value)["pids"] for node, value in self._scan("hb")}

    def problems(self) -> dict[str, str]:
        return {node: _text(value) for node, value in self._scan("problem")}

    # ------------------------------------------------------------------ workers
    def heartbeat(self, node: str, pids: list[int], ttl_s: float) -> None:
        payload = json.dumps({"pids": pids, "at": time.time()})
        self.client.set(self.key("hb", node), payload, px=int(ttl_s * 1000))

    def set_problem(self, node: str, text: str, ttl_s: float) -> None:
        self.client.set(self.key("problem", node), text, px=int(ttl_s * 1000))

    def claim(self, job_id: str, batch_id: str, node: str) -> None:
        self.client.hset(self.key("claims", job_id), batch_id, f"{node} {time.time():.3f}")

    def finish(self, job_id: str, batch_id: str | None, deferred: list[Entry]) -> None:
        """The batch is committed (or given back): out of the ledger, and what is still to do in it as
        deferred entries the dispatcher sends when due, all in one transaction."""
        pipe = self.client.pipeline(transaction=True)
        if batch_id:
            pipe.hdel(self.key("ledger", job_id), batch_id)
            pipe.hdel(self.key("claims", job_id), batch_id)
        for entry in deferred:
            pipe.hset(self.key("ledger", job_id), entry.batch_id, entry.to_json())
        pipe.execute()

    def mark(self, job_id: str, image_id: int, marker: str, previous: int | None) -> None:
        """Record that this process starts decoding `image_id`, clearing its previous marker in the
        same round trip."""
        pipe = self.client.pipeline(transaction=False)
        if previous is not None:
            pipe.hdel(self.key("markers", job_id), str(previous))
        pipe.hset(self.key("markers", job_id), str(image_id), marker)
        pipe.execute()

    def unmark(self, job_id: str, image_id: int) -> None:
        self.client.hdel(self.key("markers", job_id), str(image_id))

    def markers(self, job_id: str, image_ids: list[int]) -> dict[int, Marker]:
        values = cast(list[Any], self.client.hmget(self.key("markers", job_id), image_ids))
        return {i: Marker.parse(_text(v)) for i, v in zip(image_ids, values, strict=True) if v is not None}

    def count_death(self, job_id: str, image_id: int, marker: Marker) -> int:
        """Consume a leftover marker and count one death of `image_id`; 0 if another worker did."""
        keys = [self.key("markers", job_id), self.key("kills", job_id)]
        return self._int(self._consume(keys=keys, args=[image_id, marker.raw]))

    def count_attempt(self, job_id: str, image_id: int) -> int:
        return self._int(self.client.hincrby(self.key("attempts", job_id), str(image_id), 1))

    def reset_counts(self, job_id: str) -> None:
        self.client.delete(self.key("kills", job_id), self.key("attempts", job_id))


def marker_text(node: str, host: str) -> str:
    return json.dumps({"node": node, "host": host, "pid": os.getpid(), "at": time.time()})
