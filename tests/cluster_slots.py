"""Where things are on the tests' Redis Cluster: each master's slots, a room
on a given master, a node by port; and moving a slot by hand.

For ``test_cluster_pubsub.py`` and ``test_redis_topologies.py``.
"""

from __future__ import annotations

from redis.crc import key_slot

from chat.redis_keys import RedisKeys
from chat.tools.processes import alive
from chat.tools.redis_topology import command

KEYS = RedisKeys("chat:messages")


def masters(cluster) -> dict[int, tuple[int, int]]:
    """Each master's port -> the slot range it owns (one range per master here)."""
    port = next(n.port for n in cluster.topology.nodes.values() if alive(n.pid))
    return {int(entry[2][1]): (int(entry[0]), int(entry[1]))
            for entry in command(port, "CLUSTER", "SLOTS")}


def masters_or_none(cluster) -> dict:
    try:
        return masters(cluster)
    except Exception:  # the node asked is the one that died
        return {}


def plain_master(cluster) -> tuple[int, tuple[int, int]]:
    """A master that is neither redis-py's default node (the one that owns
    slot 0, where it sends PING and CLUSTER INFO) nor the control channel's
    master: its port and its slots."""
    control = key_slot(KEYS.channel.encode())
    return next((port, owned) for port, owned in masters(cluster).items()
                if not owned[0] <= 0 <= owned[1] and not owned[0] <= control <= owned[1])


def room_on(owned: tuple[int, int], prefix: str) -> str:
    for i in range(10_000):
        room = f"{prefix}-{i}"
        if owned[0] <= key_slot(KEYS.room_channel(room).encode()) <= owned[1]:
            return room
    raise AssertionError("no room name found for the slot range")


def node_named(cluster, port: int) -> str:
    return next(name for name, node in cluster.topology.nodes.items() if node.port == port)


def listeners_at(port: int, channel: str) -> int:
    reply = command(port, "PUBSUB", "SHARDNUMSUB", channel)
    return int(reply[1]) if reply else 0


def migrate_slot(slot: int, source: int, target: int, others: list[int]) -> None:
    """Move ``slot`` from the master on port ``source`` to the one on
    ``target``, keys and all, the way redis-cli --cluster reshard does."""
    source_id, target_id = command(source, "CLUSTER", "MYID"), command(target, "CLUSTER", "MYID")
    command(target, "CLUSTER", "SETSLOT", str(slot), "IMPORTING", source_id)
    command(source, "CLUSTER", "SETSLOT", str(slot), "MIGRATING", target_id)
    while keys := command(source, "CLUSTER", "GETKEYSINSLOT", str(slot), "100"):
        command(source, "MIGRATE", "127.0.0.1", str(target), "", "0", "5000", "KEYS", *keys)
    for port in (target, source, *others):
        command(port, "CLUSTER", "SETSLOT", str(slot), "NODE", target_id)
