"""Users' histories in Redis: what `POST /v1/events` appends to and `POST /v1/recommend` reads.

Keys, under `<prefix>:<vocabulary version>:<layout tag>:` (a new vocabulary, or a model whose
events pack differently, starts a new namespace):

    h:<user>    LIST of events, oldest first, capped at `cap` (the model's window). An event is one
                packed little-endian int32 row: item index, context indices, feedback codes, the
                multi-hash rows of an item outside the vocabulary, the event time (`Layout`).
    ids:<user>  ZSET of the user's recent event ids (score: arrival order), so a retried POST is
                not counted twice; trimmed to `keep_ids` ids.
    seeded      the training run's histories are in (JSON: users, events, seconds); until then
                ingest and reads wait (503).
    seeding     lock of the replica loading them (SET NX with an expiry).
    quarantine  STREAM of events that could not be stored (unknown item, ...), with the reason.

An append is one Lua script per user: the id check, RPUSH, LTRIM and the id set's trim happen
atomically, so concurrent POSTs for one user neither interleave nor double-count. The training
run's histories are loaded once per namespace, in bulk (pipelined scripts that only fill lists
that do not exist yet, so an interrupted load resumes without duplicating anyone).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from dataclasses import dataclass

import numpy as np
import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from argus_models.inference import Events

log = logging.getLogger("ray.serve")

ROW_FORMAT = 2  # 2: the event time after the hash rows

# KEYS: history list, id set, touched stream. ARGV: cap, keep_ids, user, then (event id, packed
# event) pairs. Returns {appended, duplicates, history length, sequence number of the last event}.
_APPEND = """
local appended, dup = 0, 0
local seq = 0
local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
if last[2] then seq = tonumber(last[2]) end
for i = 4, #ARGV, 2 do
  if redis.call('ZSCORE', KEYS[2], ARGV[i]) then
    dup = dup + 1
  else
    seq = seq + 1
    redis.call('ZADD', KEYS[2], seq, ARGV[i])
    redis.call('RPUSH', KEYS[1], ARGV[i + 1])
    appended = appended + 1
  end
end
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[1]), -1)
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -tonumber(ARGV[2]) - 1)
if appended > 0 then
  local now = redis.call('TIME')
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', 1000000, '*', 'u', ARGV[3], 's', seq,
             't', now[1] .. '.' .. string.format('%06d', now[2]))
end
return {appended, dup, redis.call('LLEN', KEYS[1]), seq}
"""

# KEYS: state hash. ARGV: seq, time, model version, query bytes, head-input bytes. The state becomes
# the latest (the one before it kept as the previous) unless a state of a later event is stored.
_WRITE_STATE = """
local seq = tonumber(redis.call('HGET', KEYS[1], 'seq') or '-1')
if tonumber(ARGV[1]) < seq then return 0 end
local q = redis.call('HGET', KEYS[1], 'q')
if q and tonumber(ARGV[1]) > seq then
  redis.call('HSET', KEYS[1], 'qp', q, 'hp', redis.call('HGET', KEYS[1], 'h'))
end
redis.call('HSET', KEYS[1], 'seq', ARGV[1], 'at', ARGV[2], 'v', ARGV[3], 'q', ARGV[4], 'h', ARGV[5])
return 1
"""

# KEYS: history list. ARGV: packed events. Fills the list only when it does not exist.
_SEED = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
for i = 1, #ARGV, 1000 do
  redis.call('RPUSH', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
return #ARGV
"""


class StoreUnavailable(RuntimeError):
    """Redis cannot be reached (or is still being loaded): the service answers 503 with this reason."""


@dataclass(frozen=True)
class Layout:
    """Columns of a packed event: the item, one per context, one per action, one per hash table,
    then the event time in seconds (an int64 as two int32 words; 0 = unknown)."""

    contexts: tuple[str, ...]
    actions: tuple[str, ...]
    hash_tables: int

    @property
    def width(self) -> int:
        return 1 + len(self.contexts) + len(self.actions) + self.hash_tables + 2

    @property
    def tag(self) -> str:
        """Names this packing in the store's keys, so events packed another way are never misread."""
        body = json.dumps([ROW_FORMAT, self.contexts, self.actions, self.hash_tables])
        return "r" + hashlib.sha1(body.encode()).hexdigest()[:8]

    def pack(self, events: Events) -> list[bytes]:
        """One bytes value per event."""
        n = len(events)
        rows = np.zeros((n, self.width), dtype="<i4")
        rows[:, 0] = events.items
        col = 1
        for c in self.contexts:
            rows[:, col] = events.contexts[c]
            col += 1
        for a in self.actions:
            rows[:, col] = events.feedback[a]
            col += 1
        if self.hash_tables and events.hashes is not None:
            rows[:, col : col + self.hash_tables] = events.hashes
        if events.times is not None:
            rows[:, -2:] = np.asarray(events.times, dtype="<i8").view("<i4").reshape(n, 2)
        return [r.tobytes() for r in rows]

    def unpack(self, values: list[bytes]) -> Events:
        raw = np.frombuffer(b"".join(values), dtype="<i4").reshape(-1, self.width)
        rows = raw.astype(np.int64)
        col = 1 + len(self.contexts)
        contexts = {c: rows[:, 1 + i] for i, c in enumerate(self.contexts)}
        feedback = {a: rows[:, col + i] for i, a in enumerate(self.actions)}
        hashes = None
        if self.hash_tables:
            start = col + len(self.actions)
            h = rows[:, start : start + self.hash_tables]
            hashes = h if h.any() else None
        times = np.ascontiguousarray(raw[:, -2:]).view("<i8").reshape(-1).astype(np.int64)
        return Events(rows[:, 0], contexts, feedback, hashes, times)


@dataclass
class Appended:
    appended: int
    duplicates: int
    history_events: int
    seq: int  # sequence number of the user's last event (0: only the training run's)


@dataclass
class UserState:
    """A user's encoder state, computed off the request path: the query vector [D] and the heads'
    input [H] for the event after event `seq`, with the state before it (SOAP's mean of two)."""

    query: np.ndarray
    head_in: np.ndarray
    seq: int
    at: float  # when it was written (seconds since the epoch)
    version: str  # the model version that computed it
    previous: tuple[np.ndarray, np.ndarray] | None = None

    def mean_of_two(self) -> tuple[np.ndarray, np.ndarray]:
        if self.previous is None:
            return self.query, self.head_in
        return (self.query + self.previous[0]) / 2, (self.head_in + self.previous[1]) / 2


def _state(raw: dict) -> UserState | None:
    if not raw or b"q" not in raw:
        return None
    vec = lambda b: np.frombuffer(b, dtype="<f4").copy()  # noqa: E731
    previous = (vec(raw[b"qp"]), vec(raw[b"hp"])) if b"qp" in raw else None
    return UserState(vec(raw[b"q"]), vec(raw[b"h"]), int(raw[b"seq"]), float(raw[b"at"]), raw[b"v"].decode(), previous)


@dataclass
class Touched:
    """Users whose histories changed, read from the stream by a refresher."""

    ids: list[bytes]  # stream entry ids, to acknowledge
    users: dict[str, tuple[int, float]]  # user -> (latest seq, earliest ingest time) of the entries


class EventStore:
    """Histories in Redis at `url`, namespaced by the vocabulary version, capped at `cap` events."""

    def __init__(self, url: str, namespace: str, layout: Layout, cap: int, keep_ids: int = 0, prefix: str = "argus"):
        if cap < 1:
            raise ValueError(f"history cap must be at least 1 event, got {cap}")
        self.url, self.layout, self.cap = url, layout, cap
        self.keep_ids = keep_ids or max(4 * cap, 1000)
        self.ns = f"{prefix}:{namespace}:{layout.tag}"
        options = dict(
            socket_timeout=2.0,
            socket_connect_timeout=1.0,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
            retry_on_error=[redis.ConnectionError, redis.TimeoutError],
            health_check_interval=15,
        )
        self._sync = redis.Redis.from_url(url, **options)
        self._async_options = options
        self._async: aioredis.Redis | None = None
        self._async_loop = None
        self.seed_info: dict | None = None

    # -- keys -----------------------------------------------------------------------------------
    def _history(self, user: str) -> str:
        return f"{self.ns}:h:{user}"

    def _ids(self, user: str) -> str:
        return f"{self.ns}:ids:{user}"

    @property
    def _seeded(self) -> str:
        return f"{self.ns}:seeded"

    @property
    def quarantine_key(self) -> str:
        return f"{self.ns}:quarantine"

    @property
    def touched_key(self) -> str:
        return f"{self.ns}:touched"

    def _state_key(self, user: str) -> str:
        return f"{self.ns}:s:{user}"

    def _client(self) -> aioredis.Redis:
        # one asyncio client per event loop (a replica's requests run on one loop)
        loop = asyncio.get_running_loop()
        if self._async is None or self._async_loop is not loop:
            options = dict(self._async_options)
            options["retry"] = AsyncRetry(ExponentialBackoff(cap=0.5, base=0.05), 2)
            self._async, self._async_loop = aioredis.Redis.from_url(self.url, **options), loop
        return self._async

    def _unavailable(self, exc: Exception) -> StoreUnavailable:
        return StoreUnavailable(f"the event store at {self.url} is unreachable ({type(exc).__name__}: {exc})")

    # -- bulk load of the training run's histories ------------------------------------------------
    def seed(self, histories, users: int, wait_s: float = 600.0, chunk: int = 500) -> dict:
        """Load `histories` (an iterable of (raw user id, Events), `users` of them) once per
        namespace: the replica that takes the lock loads them; the others wait for `seeded`."""
        try:
            info = self._sync.get(self._seeded)
            if info is not None:
                self.seed_info = json.loads(info)
                return self.seed_info
            lock = f"{self.ns}:seeding"
            if not self._sync.set(lock, "1", nx=True, ex=int(wait_s)):
                deadline = time.time() + wait_s
                while time.time() < deadline:
                    info = self._sync.get(self._seeded)
                    if info is not None:
                        self.seed_info = json.loads(info)
                        return self.seed_info
                    time.sleep(0.5)
                raise StoreUnavailable(
                    f"{self.url}: another replica holds {lock} and has not finished in {wait_s:.0f}s"
                )
            t0, events, filled, last_log = time.time(), 0, 0, time.time()
            script = self._sync.register_script(_SEED)
            pipe = self._sync.pipeline(transaction=False)
            done = 0
            for user, ev in histories:
                packed = self.layout.pack(ev.tail(self.cap))
                if packed:
                    script(keys=[self._history(user)], args=packed, client=pipe)
                    events += len(packed)
                done += 1
                if done % chunk == 0:
                    filled += sum(1 for r in pipe.execute() if r)
                    if time.time() - last_log > 10:
                        rate = done / (time.time() - t0)
                        log.info(
                            "event store: loaded %d/%d users (ETA %.0fs)", done, users, (users - done) / max(rate, 1e-9)
                        )
                        last_log = time.time()
            filled += sum(1 for r in pipe.execute() if r)
            self.seed_info = {
                "users": done,
                "lists_filled": filled,
                "events": events,
                "seconds": round(time.time() - t0, 2),
                "at": time.time(),
            }
            self._sync.set(self._seeded, json.dumps(self.seed_info))
            self._sync.delete(lock)
            log.info("event store: %s seeded with %s", self.ns, self.seed_info)
            return self.seed_info
        except redis.RedisError as exc:
            raise self._unavailable(exc) from exc

    # -- the request path -------------------------------------------------------------------------
    async def append(self, per_user: dict[str, list[tuple[str, bytes]]]) -> dict[str, Appended]:
        """Append each user's (event id, packed event) pairs, in order, skipping ids already stored."""
        client = self._client()
        try:
            script = client.register_script(_APPEND)
            pipe = client.pipeline(transaction=False)
            users = list(per_user)
            for user in users:
                args = [self.cap, self.keep_ids, user]
                for event_id, packed in per_user[user]:
                    args += [event_id, packed]
                keys = [self._history(user), self._ids(user), self.touched_key]
                await script(keys=keys, args=args, client=pipe)
            results = await pipe.execute()
        except redis.RedisError as exc:
            raise self._unavailable(exc) from exc
        return {u: Appended(int(r[0]), int(r[1]), int(r[2]), int(r[3])) for u, r in zip(users, results)}

    async def read(self, user: str) -> tuple[Events | None, int, UserState | None]:
        """The user's history, the sequence number of its last event and the stored state, in one
        round trip."""
        try:
            pipe = self._client().pipeline(transaction=False)
            pipe.lrange(self._history(user), 0, -1)
            pipe.zrange(self._ids(user), -1, -1, withscores=True)
            pipe.hgetall(self._state_key(user))
            values, last, state = await pipe.execute()
        except redis.RedisError as exc:
            raise self._unavailable(exc) from exc
        seq = int(last[0][1]) if last else 0
        return (self.layout.unpack(values) if values else None), seq, _state(state)

    async def write_states(self, states: list[tuple[str, int, np.ndarray, np.ndarray]], version: str) -> int:
        """Store (user, seq, query, head input) states computed by `version`; returns how many were
        newer than what was stored."""
        client = self._client()
        try:
            script = client.register_script(_WRITE_STATE)
            pipe = client.pipeline(transaction=False)
            now = repr(time.time())
            for user, seq, query, head_in in states:
                args = [seq, now, version, query.astype("<f4").tobytes(), head_in.astype("<f4").tobytes()]
                await script(keys=[self._state_key(user)], args=args, client=pipe)
            return sum(int(r) for r in await pipe.execute())
        except redis.RedisError as exc:
            raise self._unavailable(exc) from exc

    async def touched(self, group: str, consumer: str, count: int = 64, block_ms: int = 1000) -> Touched:
        """The next entries of the touched stream for `consumer` of `group` (created at the stream's
        start on first use), those delivered to it before but not acknowledged first."""
        client = self._client()
        try:
            try:
                await client.xgroup_create(self.touched_key, group, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            entries = await client.xreadgroup(group, consumer, {self.touched_key: "0"}, count=count)
            if not entries or not entries[0][1]:
                entries = await client.xreadgroup(group, consumer, {self.touched_key: ">"}, count=count, block=block_ms)
        except redis.RedisError as exc:
            raise self._unavailable(exc) from exc
        ids, users = [], {}
        for _, messages in entries or []:
            for entry_id, fields in messages:
                ids.append(entry_id)
                if not fields:  # trimmed from the stream since it was delivered
                    continue
                user, seq, at = fields[b"u"].decode(), int(fields[b"s"]), float(fields[b"t"])
                old = users.get(user)
                users[user] = (max(seq, old[0]), min(at, old[1])) if old else (seq, at)
        return Touched(ids, users)

    async def histories(self, users: list[str]) -> list[tuple[Events | None, int]]:
        """(history, seq of its last event) of each user, in one round trip."""
        try:
            pipe = self._client().pipeline(transaction=False)
            for user in users:
                pipe.lrange(self._history(user), 0, -1)
                pipe.zrange(self._ids(user), -1, -1, withscores=True)
            raw = await pipe.execute()
        except redis.RedisError as exc:
            raise self._unavailable(exc) from exc
        out = []
        for values, last in zip(raw[::2], raw[1::2]):
            out.append(((self.layout.unpack(values) if values else None), int(last[0][1]) if last else 0))
        return out

    async def ack(self, group: str, ids: list[bytes]) -> None:
        if ids:
            try:
                await self._client().xack(self.touched_key, group, *ids)
            except redis.RedisError as exc:
                raise self._unavailable(exc) from exc

    async def quarantine(self, records: list[dict]) -> None:
        """Keep what could not be stored, with its reason, in a capped stream."""
        if not records:
            return
        client = self._client()
        try:
            pipe = client.pipeline(transaction=False)
            for r in records:
                pipe.xadd(self.quarantine_key, {"record": json.dumps(r)}, maxlen=100_000, approximate=True)
            await pipe.execute()
        except redis.RedisError as exc:
            raise self._unavailable(exc) from exc

    async def ping(self) -> None:
        try:
            await self._client().ping()
        except redis.RedisError as exc:
            raise self._unavailable(exc) from exc

    def stats(self) -> dict:
        return {"url": self.url, "namespace": self.ns, "cap": self.cap, "seeded": self.seed_info}
