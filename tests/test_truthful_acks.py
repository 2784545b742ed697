"""An ack says exactly what happened to a message (issue 12, "truthful acks").

Three outcomes, each checked against real replicas and a real Redis, counted
on the wire (raw ``message`` events, before any client-side repair):

* ``ok``: stored and numbered; a retry with the same id stores nothing
  more and answers with the first number (``duplicate``);
* ``not sent``: certainly not stored (Redis refused it, out of memory, or
  could not be reached), so nobody ever receives it;
* ``unknown``: the append was sent and no answer came (Redis stalled past
  the 1 s timeout).  Redis may run it when it wakes: then everyone gets it
  once, and the sender's retry with the same id does not store it twice.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
from collections import Counter

import pytest
import redis

from chat.events import NOT_SENT, UNKNOWN

pytestmark = [pytest.mark.slow, pytest.mark.hostile]


def mid() -> str:
    return secrets.token_hex(8)


async def say(client, text: str, message_id: str, timeout: float = 8.0) -> dict:
    return await client.sio.call("message", {"text": text, "id": message_id}, timeout=timeout)


def copies(client) -> Counter:
    """How many times each message id reached ``client`` on the wire."""
    return Counter(m["id"] for m in client.messages)


@pytest.mark.parametrize("mode", ["memory", "socketio", "pubsub"])
async def test_a_retry_with_the_same_id_is_stored_once(cluster_factory, connect, mode):
    if mode == "memory":
        cluster = cluster_factory(replicas=1, mode="memory", proxy=False)
        sender_url = receiver_url = cluster.replicas[0].url
    else:
        cluster = cluster_factory(replicas=2, mode=mode, proxy=False)
        sender_url, receiver_url = (r.url for r in cluster.replicas)
    ana = await connect(sender_url, "ana")
    bia = await connect(receiver_url, "bia")
    first_id, other_id = mid(), mid()
    first = await say(ana, "once", first_id)
    again = await say(ana, "once", first_id)
    other = await say(ana, "twice", other_id)
    assert first == {"ok": True, "id": first_id, "seq": first["seq"]}
    assert again == {"ok": True, "id": first_id, "seq": first["seq"], "duplicate": True}
    assert other == {"ok": True, "id": other_id, "seq": first["seq"] + 1}
    await bia.wait_for(lambda: other_id in copies(bia))
    await asyncio.sleep(1.5)  # a second copy, if any, would come by now
    for reader in (ana, bia):
        assert copies(reader) == {first_id: 1, other_id: 1}
        assert reader.seqs() == [first["seq"], first["seq"] + 1]


async def test_an_id_that_is_not_one_is_refused(shared_clusters, connect):
    cluster = shared_clusters(replicas=1, proxy=False)
    ana = await connect(cluster.replicas[0].url, "ana")
    ack = await say(ana, "hello", "no spaces allowed")
    assert ack == {"ok": False, "error": "message id must be 8 to 64 letters, digits, '-' or '_'"}
    await asyncio.sleep(0.3)
    assert ana.messages == []


@pytest.mark.parametrize("mode", ["socketio", "pubsub"])
async def test_no_message_is_reported_not_sent_and_then_delivered(cluster_factory, connect,
                                                                  mode):
    """Redis stalls (SIGSTOP) for longer than the replicas' 1 s timeout, with
    messages in flight.  Every answer in the stall is ``unknown``, none is
    ``not sent``; what Redis ran when it woke reaches every reader once, and
    retrying every message with its id completes the set without a repeat."""
    cluster = cluster_factory(replicas=2, mode=mode, proxy=False)
    r1, r2 = cluster.replicas
    senders = [await connect(r1.url, f"s{i}") for i in range(4)]
    reader = await connect(r2.url, "reader")
    assert (await say(senders[0], "before", mid()))["ok"]
    await reader.wait_for(lambda: len(reader.messages) == 1)

    async def stalled_sends(sender) -> list[tuple[str, dict]]:
        sent = []
        for n in range(3):
            message_id = mid()
            sent.append((message_id, await say(sender, f"{sender.name} {n}", message_id)))
        return sent

    os.kill(cluster.redis.pid, signal.SIGSTOP)
    try:
        sends = asyncio.gather(*(stalled_sends(s) for s in senders))
        await asyncio.sleep(4.0)
    finally:
        os.kill(cluster.redis.pid, signal.SIGCONT)
    outcomes = [pair for batch in await sends for pair in batch]
    answers = Counter("ok" if a["ok"] else a["error"] for _, a in outcomes)
    assert answers[NOT_SENT] == 0, answers
    assert answers[UNKNOWN] >= 4, answers  # at least the first message of each sender
    assert set(answers) <= {"ok", UNKNOWN}, answers
    for message_id, ack in outcomes:
        assert ack["id"] == message_id
        if not ack["ok"]:
            assert ack["unknown"] is True

    # What Redis ran after waking arrives through the replicas' catch-up;
    # then every message is sent again with its id, as a client would.
    await asyncio.sleep(3.0)
    stored_before = set(copies(reader))
    retries = {}
    for (message_id, _), sender in zip(outcomes, [s for s in senders for _ in range(3)],
                                       strict=True):
        retries[message_id] = await say(sender, "retry", message_id)
    for message_id, retry in retries.items():
        assert retry["ok"], retry
        # A message Redis ran during the stall is found, not stored again.
        assert retry.get("duplicate", False) == (message_id in stored_before), message_id
    wanted = {i for i, _ in outcomes}
    await reader.wait_for(lambda: wanted <= set(copies(reader)), timeout=5)
    await asyncio.sleep(1.5)
    for client in (reader, *senders):
        counts = copies(client)
        assert all(counts[i] == 1 for i in wanted), counts
        seqs = client.seqs()
        assert seqs == sorted(set(seqs)), "repeats or disorder on the wire"


async def test_redis_out_of_memory_is_named_and_nothing_is_delivered(cluster_factory,
                                                                     connect):
    cluster = cluster_factory(replicas=2, mode="pubsub", proxy=False)
    r1, r2 = cluster.replicas
    ana, bia = await connect(r1.url, "ana"), await connect(r2.url, "bia")
    admin = redis.Redis.from_url(cluster.redis_url)
    try:
        admin.config_set("maxmemory", 1)  # every write is now over the limit
        refused = [await say(ana, f"full {n}", mid()) for n in range(5)]
        admin.config_set("maxmemory", 0)
        after = await say(ana, "room again", mid())
    finally:
        admin.config_set("maxmemory", 0)
        admin.close()
    for ack in refused:
        assert ack == {"ok": False, "id": ack["id"],
                       "error": "not sent: Redis is out of memory (maxmemory reached)"}
    assert after["ok"]
    await bia.wait_for(lambda: after["id"] in copies(bia))
    await asyncio.sleep(1.5)  # the catch-up would have found a stored one
    for reader in (ana, bia):
        assert list(copies(reader)) == [after["id"]]
    log = (cluster.logs / "replica-1.log").read_text()
    assert log.count("Redis refused a message: Redis is out of memory") == 1, log[-2000:]
