"""Redis Cluster: the pubsub mode's subscription, split over the shards.

On a Cluster, sharded pub/sub (Redis 7) keeps a channel's messages on the
shard that owns the channel's slot: SPUBLISH goes there, and only there can
SSUBSCRIBE hear it.  A room's channel carries the room's hash tag
(``redis_keys.py``), so it lives on the same shard as the room's keys, and
the append script can SPUBLISH it where it runs.  The control channel lives
on the shard of its own slot.

So a replica holds one link per master that owns a channel it wants: a
:class:`~chat.backplane.subscriber.Subscriber` in sharded mode, on a client
of that node alone.  :class:`Shards` presents the same face as one
``Subscriber`` to the manager (``want``, ``drop``, ``messages``,
``subscribed``, ``wanted``) and places each channel on its owner's link.

Channels move, and are placed again after the cluster's slot map is read
anew:

* a slot migrated: Redis unsubscribes the slot's channels on the old owner
  (a ``sunsubscribe`` push for a channel we still want, ``on_moved``);
* a master failed over: its link's connection breaks (``on_lost``), and
  every channel of that link is placed again; a link left with nothing to
  hear is closed.

Each newly confirmed room channel reads the room's history for what it
missed, as on one Redis (``Sequencer.refresh``).

Ready (:meth:`Shards.ready`, ``/readyz``) means: the control channel is
confirmed, no link is down (a link stays down from its master's death until
its channels move to the promoted replica), and the Cluster serves every
slot (``CLUSTER INFO``'s ``cluster_state:ok``, which turns ``fail`` once a
master is marked failed, whether or not this replica has a room there).
Readiness is asked often: the links are looked at in memory, and one
``CLUSTER INFO`` answer, asked of any node that answers within a second,
stands for ``CLUSTER_STATE_EVERY`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from ..redis_clients import shard_client
from .subscriber import Subscriber

PLACE_AGAIN_AFTER = 0.2  # seconds between reading the slot map and placing moved channels
CLUSTER_STATE_EVERY = 1.0  # seconds one CLUSTER INFO answer stands for readiness
CLUSTER_STATE_WITHIN = 1.0  # seconds CLUSTER INFO has to answer


class Shards:
    def __init__(self, cluster: RedisCluster, client_name: str, control: str, metrics,
                 logger: logging.Logger, on_confirmed: Callable[[list[str]], None]):
        self.cluster = cluster
        self.client_name = client_name
        self.control = control
        self.metrics = metrics
        self.log = logger
        self.on_confirmed = on_confirmed
        self.links: dict[str, Subscriber] = {}  # node name -> its link
        self.readers: dict[str, asyncio.Task] = {}
        self.wanted: dict[str, str] = {}  # channel -> room (the control channel too)
        self.owner: dict[str, str] = {}  # channel -> node name of the link it is on
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=10_000)
        self.unplaced: set[str] = set()
        self.placer: asyncio.Task | None = None
        self.closing: set[asyncio.Task] = set()  # links being closed
        self.started = False
        self.channel_of: Callable[[str], str] = str  # set by the manager
        self.state: tuple[bool, str] = (False, "the Cluster's state not asked yet")
        self.state_at = float("-inf")
        self.asking = asyncio.Lock()  # one CLUSTER INFO at a time

    # -- the manager's face ------------------------------------------------------
    @property
    def subscribed(self) -> bool:
        link = self.links.get(self.owner.get(self.control, ""))
        return link is not None and self.control in link.confirmed

    @property
    def confirmed(self) -> set[str]:
        return {c for link in self.links.values() for c in link.confirmed}

    async def ready(self) -> tuple[bool, str]:
        """``(ready, reason)``: see the module's docstring."""
        if not self.subscribed:
            return False, "not subscribed to the Redis channel"
        down = sorted(name for name, link in self.links.items() if link.broken)
        if down:
            return False, f"the subscription to Cluster node {down[0]} is down"
        async with self.asking:  # callers meanwhile wait for its answer (bounded)
            if time.monotonic() - self.state_at >= CLUSTER_STATE_EVERY:
                self.state = await self._cluster_state()
                self.state_at = time.monotonic()
        return self.state

    async def _cluster_state(self) -> tuple[bool, str]:
        try:
            # redis-py asks its default node, and another one if that fails
            info = await asyncio.wait_for(self.cluster.cluster_info(), CLUSTER_STATE_WITHIN)
        except (TimeoutError, OSError, RedisError) as exc:
            return False, f"no Cluster node answers CLUSTER INFO ({str(exc) or type(exc).__name__})"
        state = info.get("cluster_state")
        if state != "ok":
            return False, f"the Cluster reports cluster_state:{state} (a slot without a master)"
        return True, "subscribed"

    def want(self, room: str) -> None:
        channel = self.channel_of(room)
        if channel not in self.wanted:
            self.wanted[channel] = room
            self._place(channel)

    def drop(self, room: str) -> None:
        channel = self.channel_of(room)
        if self.wanted.pop(channel, None) is None:
            return
        self.unplaced.discard(channel)
        link = self.links.get(self.owner.pop(channel, ""))
        if link is not None:
            link.drop_channel(channel)

    async def messages(self):
        """Yield ``(channel, payload)`` from every link, forever."""
        self.wanted[self.control] = ""
        self.started = True
        await self._read_slots()
        for channel in list(self.wanted):
            self._place(channel)
        try:
            while True:
                yield await self.queue.get()
        finally:
            await self.close()

    # -- placing channels on links ---------------------------------------------
    def _place(self, channel: str) -> None:
        if not self.started:
            return  # messages() places everything wanted when it starts
        try:
            node = self.cluster.get_node_from_key(channel)
        except Exception:  # no slot map yet, or the slot has no master now
            self._later(channel)
            return
        if node is None:
            self._later(channel)
            return
        self.owner[channel] = node.name
        self._link(node).want_channel(channel, self.wanted[channel])

    def _later(self, channel: str) -> None:
        self.unplaced.add(channel)
        if self.placer is None or self.placer.done():
            self.placer = asyncio.ensure_future(self._place_again())

    async def _place_again(self) -> None:
        """Read the slot map again, then place every channel waiting for it."""
        delay = PLACE_AGAIN_AFTER
        while self.unplaced:
            await asyncio.sleep(delay)
            if not await self._read_slots():
                delay = min(delay * 2, 2.0)
                continue
            waiting, self.unplaced = self.unplaced, set()
            for channel in waiting:
                old = self.links.get(self.owner.pop(channel, ""))
                if old is not None:
                    old.drop_channel(channel)
                if channel in self.wanted:
                    self._place(channel)
            self._close_idle_links()

    async def _read_slots(self) -> bool:
        try:
            await self.cluster.nodes_manager.initialize()
            return True
        except (OSError, RedisError) as exc:
            self.log.warning("backplane: cannot read the Cluster's slots: %s", exc)
            return False

    def _link(self, node) -> Subscriber:
        link = self.links.get(node.name)
        if link is not None:
            return link
        name = node.name
        link = Subscriber(
            shard_client(node, self.client_name), None, self.metrics, self.log,
            self.on_confirmed, sharded=True,
            on_moved=self._later,
            on_lost=lambda: self._lost(name))
        link.count = self._count
        self.links[name] = link
        self.readers[name] = asyncio.ensure_future(self._pump(link))
        return link

    async def _pump(self, link: Subscriber) -> None:
        async for item in link.messages():
            await self.queue.put(item)

    def _lost(self, name: str) -> None:
        """A link's connection broke: its master may have failed over."""
        link = self.links.get(name)
        if link is None:
            return
        for channel in list(link.wanted):
            self._later(channel)

    def _close_idle_links(self) -> None:
        for name, link in list(self.links.items()):
            if not link.wanted and name not in self.owner.values():
                self.links.pop(name)
                task = self.readers.pop(name)
                task.cancel()
                closing = asyncio.ensure_future(_close_client(task, link))
                self.closing.add(closing)
                closing.add_done_callback(self.closing.discard)

    def _count(self) -> None:
        self.metrics.channels.set(sum(len(link.confirmed) for link in self.links.values()))

    async def close(self) -> None:
        if self.placer is not None:
            self.placer.cancel()
        tasks = list(self.readers.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for link in self.links.values():
            with contextlib.suppress(OSError, RedisError):
                await link.redis.aclose()
        self.links.clear()
        self.readers.clear()


async def _close_client(task: asyncio.Task, link: Subscriber) -> None:
    await asyncio.gather(task, return_exceptions=True)
    with contextlib.suppress(OSError, RedisError):
        await link.redis.aclose()
