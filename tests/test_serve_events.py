"""The Redis event store on a real redis-server: packing, the bulk load of the training run's
histories, atomic capped appends, idempotent retries, and a server restart."""

import asyncio
import concurrent.futures

import numpy as np
import pytest
import redis

from argus_models.inference import Events
from argus_serve.events import EventStore, Layout, StoreUnavailable

LAYOUT = Layout(contexts=("device",), actions=("like", "played_ratio"), hash_tables=0)


def _events(items, start=0):
    n = len(items)
    return Events(
        np.asarray(items, dtype=np.int64),
        {"device": (np.arange(n) + start) % 3},
        {"like": np.arange(n) % 2, "played_ratio": (np.arange(n) * 3) % 10},
        times=1_733_450_000 + 60 * (np.arange(n) + start),
    )


def _same(a: Events, b: Events) -> bool:
    return (
        np.array_equal(a.items, b.items)
        and np.array_equal(a.times, b.times)
        and all(np.array_equal(a.contexts[c], b.contexts[c]) for c in a.contexts)
        and all(np.array_equal(a.feedback[k], b.feedback[k]) for k in a.feedback)
    )


def _store(redis_server, namespace, cap=5):
    return EventStore(redis_server.url, namespace, LAYOUT, cap=cap)


def test_packed_events_round_trip_with_and_without_hash_rows():
    ev = _events([3, 1, 4, 1, 5])
    assert _same(LAYOUT.unpack(LAYOUT.pack(ev)), ev)
    hashed = Layout(("device",), ("like", "played_ratio"), hash_tables=2)
    ev.hashes = np.zeros((5, 2), dtype=np.int64)
    ev.hashes[2] = [7, 11]
    back = hashed.unpack(hashed.pack(ev))
    assert _same(back, ev) and np.array_equal(back.hashes, ev.hashes)
    ev.times = np.array([0, 1, 2**31, 2**40, 4_102_444_800])  # int64 seconds: past 2038 and 2100
    assert np.array_equal(hashed.unpack(hashed.pack(ev)).times, ev.times)
    assert hashed.tag != LAYOUT.tag  # events packed another way live under other keys


def test_seed_once_then_capped_atomic_appends_and_idempotent_retries(redis_server):
    store = _store(redis_server, "t-seed")
    histories = [("u1", _events([1, 2, 3, 4, 5, 6, 7])), ("u2", _events([9]))]
    info = store.seed(iter(histories), users=2)
    assert info["users"] == 2 and info["lists_filled"] == 2 and info["events"] == 5 + 1  # u1 capped at 5
    # a second replica (or a restart) finds the namespace loaded and loads nothing
    again = _store(redis_server, "t-seed").seed(iter([("u1", _events([42]))]), users=1)
    assert again == info

    async def scenario():
        got = (await store.read("u1"))[0]
        assert _same(got, _events([1, 2, 3, 4, 5, 6, 7]).tail(5))
        assert (await store.read("nobody"))[0] is None
        new = _events([11, 12], start=7)
        packed = LAYOUT.pack(new)
        done = await store.append({"u1": [("e1", packed[0]), ("e2", packed[1])], "new-user": [("e3", packed[0])]})
        assert (done["u1"].appended, done["u1"].duplicates, done["u1"].history_events) == (2, 0, 5)
        assert (done["new-user"].appended, done["new-user"].history_events) == (1, 1)
        got = (await store.read("u1"))[0]
        assert got.items.tolist() == [5, 6, 7, 11, 12]  # the window: the oldest left out
        assert got.contexts["device"].tolist()[-2:] == new.contexts["device"].tolist()
        retry = await store.append({"u1": [("e1", packed[0]), ("e2", packed[1])]})
        assert (retry["u1"].appended, retry["u1"].duplicates) == (0, 2)
        assert ((await store.read("u1"))[0]).items.tolist() == [5, 6, 7, 11, 12]

    asyncio.run(scenario())


def test_concurrent_appends_for_one_user_neither_interleave_nor_double_count(redis_server):
    store = _store(redis_server, "t-concurrent", cap=1000)
    store.seed(iter([]), users=0)
    one = LAYOUT.pack(_events([1]))[0]

    def writer(w):
        async def run():
            for b in range(10):  # 10 batches of 5 events, each batch sent twice (a retry)
                batch = [(f"w{w}-b{b}-e{e}", one) for e in range(5)]
                await store.append({"hot": batch})
                await store.append({"hot": batch})

        asyncio.run(run())

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(writer, range(4)))
    got = asyncio.run(store.read("hot"))[0]
    assert len(got) == 4 * 10 * 5


def test_ingested_events_survive_a_redis_restart_and_requests_meanwhile_get_a_clear_error(redis_server):
    store = _store(redis_server, "t-restart")
    store.seed(iter([("u1", _events([1, 2]))]), users=1)
    packed = LAYOUT.pack(_events([8]))

    async def append_and_read():
        await store.append({"u1": [("x1", packed[0])]})
        return (await store.read("u1"))[0]

    assert asyncio.run(append_and_read()).items.tolist() == [1, 2, 8]
    redis_server.stop()
    try:
        with pytest.raises(StoreUnavailable, match=f"event store at {redis_server.url} is unreachable"):
            asyncio.run(store.read("u1"))
    finally:
        redis_server.start()
    assert asyncio.run(store.read("u1"))[0].items.tolist() == [1, 2, 8]  # from the append-only file
    assert redis.Redis.from_url(redis_server.url).get(f"{store.ns}:seeded") is not None


def test_states_keep_the_one_before_for_the_mean_of_two_and_an_older_state_never_wins(redis_server):
    store = _store(redis_server, "t-states")
    store.seed(iter([("u1", _events([1, 2]))]), users=1)
    q1, h1, q2, h2 = (np.full(4, v, dtype=np.float32) for v in (1.0, 10.0, 3.0, 30.0))

    async def scenario():
        packed = LAYOUT.pack(_events([5, 6]))
        done = await store.append({"u1": [("a", packed[0])]})
        assert done["u1"].seq == 1
        touched = await store.touched("g", "c1", block_ms=10)
        assert touched.users["u1"][0] == 1 and len(touched.ids) == 1
        assert await store.write_states([("u1", 1, q1, h1)], "m@1") == 1
        _, seq, state = await store.read("u1")
        assert seq == 1 and state.seq == 1 and state.previous is None and state.version == "m@1"
        assert np.array_equal(state.mean_of_two()[0], q1)
        # unacknowledged entries come back to the same consumer; acknowledged ones do not
        assert (await store.touched("g", "c1", block_ms=10)).ids == touched.ids
        await store.ack("g", touched.ids)
        assert not (await store.touched("g", "c1", block_ms=10)).ids
        assert (await store.append({"u1": [("b", packed[1])]}))["u1"].seq == 2
        assert await store.write_states([("u1", 2, q2, h2)], "m@1") == 1
        assert await store.write_states([("u1", 1, q1 * 0, h1 * 0)], "m@1") == 0  # a late, older state
        events, seq, state = await store.read("u1")
        assert events.items.tolist() == [1, 2, 5, 6] and seq == 2 and state.seq == 2
        q, h = state.mean_of_two()
        assert np.array_equal(q, (q1 + q2) / 2) and np.array_equal(h, (h1 + h2) / 2)

    asyncio.run(scenario())
