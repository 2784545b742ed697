"""Who is online: one list across replicas, and crashed replicas' users go.

Real redis-server and replica processes; ``PRESENCE_TTL`` is shortened to
3 s so that "gone within the TTL" is quick to check.
"""

from __future__ import annotations

import json
import time

import pytest
import redis

from chat.redis_keys import RedisKeys

pytestmark = pytest.mark.slow

TTL = 3.0
ENV = {"PRESENCE_TTL": str(TTL)}


def names(people) -> list[str]:
    return sorted(p["name"] for p in people)


async def test_every_replica_gives_the_same_list(shared_clusters, connect, mode):
    cluster = shared_clusters(replicas=3, mode=mode, proxy=False, env=ENV)
    room = f"who-{mode}"
    clients = [await connect(r.url, f"{r.server_id}-{i}", room=room)
               for i in range(2) for r in cluster.replicas]
    expected = sorted(c.name for c in clients)

    # The last one in was told everyone, itself included.
    last = clients[-1]
    assert names(last.welcome["presence"]) == expected
    assert {"id": last.welcome["id"], "name": last.name} in last.welcome["presence"]
    assert last.welcome["presence_count"] == len(expected)

    answers = [await c.sio.call("presence", {}) for c in clients]
    assert all(a["ok"] and a["count"] == len(expected) for a in answers)
    assert all(a["presence"] == answers[0]["presence"] for a in answers)
    assert names(answers[0]["presence"]) == expected

    # The first one in heard of each arrival, wherever it happened.
    first = clients[0]
    await first.wait_for(lambda: all(first.saw("joined", c.name) for c in clients[1:]))


async def test_presence_events_list_who_came_and_went(shared_clusters, connect, mode):
    cluster = shared_clusters(replicas=3, mode=mode, proxy=False, env=ENV)
    room = f"events-{mode}"
    witness = await connect(cluster.replicas[0].url, "witness", room=room)
    visitor = await connect(cluster.replicas[2].url, "visitor", room=room)
    await witness.wait_for(lambda: witness.saw("joined", "visitor"))
    joined = next(e for e in witness.presence
                  if any(p["name"] == "visitor" for p in e["joined"]))
    assert joined["room"] == room and joined["count"] == 2
    assert joined["joined"] == [{"id": visitor.welcome["id"], "name": "visitor"}]

    await visitor.sio.disconnect()
    await witness.wait_for(lambda: witness.saw("left", "visitor"))
    answer = await witness.sio.call("presence", {})
    assert names(answer["presence"]) == ["witness"]


async def test_a_crashed_replicas_users_are_gone_within_the_ttl(cluster_factory, connect, mode):
    cluster = cluster_factory(replicas=3, mode=mode, proxy=False, env=ENV)
    room = "crash"
    survivors = [await connect(cluster.replicas[0].url, "calm", room=room)]
    doomed = [await connect(cluster.replicas[1].url, f"doomed{i}", room=room) for i in range(3)]
    survivors.append(await connect(cluster.replicas[2].url, "steady", room=room))
    assert names((await survivors[0].sio.call("presence", {}))["presence"]) == sorted(
        ["calm", "steady", "doomed0", "doomed1", "doomed2"])

    # Every entry expires at most TTL from now: the store itself says so
    # (an entry set to live longer would outlive a crash by that much).
    admin = redis.Redis.from_url(cluster.redis_url)
    try:
        now_ms = time.time() * 1000
        scores = [score for _, score in admin.zrange(
            RedisKeys("chat:messages").room_presence(room), 0, -1, withscores=True)]
    finally:
        admin.close()
    assert len(scores) == 5
    assert max(scores) - now_ms <= TTL * 1000 + 100, "an entry lives longer than the TTL"

    cluster.kill_replica("replica-2")  # SIGKILL: nobody says goodbye
    killed = time.monotonic()
    # An entry expires TTL after its last refresh (at most TTL/3 before the
    # kill), and a survivor notices within one refresh period (TTL/3); 1 s of
    # slack for a busy machine.  (This bound alone cannot tell 1.5 TTL from a
    # slow machine; the scores above can.)
    for client in survivors:
        await client.wait_for(
            lambda client=client: all(client.saw("left", d.name) for d in doomed),
            TTL + TTL / 3 + 1.0)
    gone_after = time.monotonic() - killed
    print(f"\n{mode}: crashed replica's users gone {gone_after:.1f} s after SIGKILL "
          f"(PRESENCE_TTL {TTL:g} s)")
    for client in survivors:
        answer = await client.sio.call("presence", {})
        assert names(answer["presence"]) == ["calm", "steady"]
    # Each departure was announced once, by one replica.
    lefts = [p["name"] for e in survivors[0].presence for p in e["left"]]
    assert sorted(lefts) == ["doomed0", "doomed1", "doomed2"]


async def test_a_big_room_lists_a_few_hundred_and_counts_everyone(shared_clusters, connect,
                                                                  mode):
    """The list a welcome carries is capped (every reconnecting member gets
    it); the count is the room's."""
    from chat.presence import LIST_MAX

    cluster = shared_clusters(replicas=3, mode=mode, proxy=False, env=ENV)
    room = f"crowd-{mode}"
    url = cluster.replicas[0].url
    admin = redis.Redis.from_url(cluster.redis_url)
    try:
        # Fill the room's presence directly: LIST_MAX + 50 people who are
        # online elsewhere, without opening that many connections.
        expires = (time.time() + 60) * 1000
        admin.zadd(RedisKeys("chat:messages").room_presence(room),
                   {json.dumps([f"x{i}", f"crowd{i}"]): expires for i in range(LIST_MAX + 50)})
    finally:
        admin.close()
    client = await connect(url, "late", room=room)
    assert len(client.welcome["presence"]) == LIST_MAX
    assert client.welcome["presence_count"] == LIST_MAX + 51
    answer = await client.sio.call("presence", {})
    assert (len(answer["presence"]), answer["count"]) == (LIST_MAX, LIST_MAX + 51)
