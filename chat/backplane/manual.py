"""The "manual" mode: each replica hears only the rooms it has members in.

python-socketio splits a multi-server manager in two layers.  The base class
``socketio.AsyncPubSubManager`` turns every operation that may concern a
client on another replica into a message (a dict with a ``method`` and the
sender's ``host_id``) and replays other hosts' messages locally.  A transport
subclass supplies ``_publish(message)`` and a listening loop.  The library's
own Redis transport (the automatic mode, ``automatic.py``) sends all of it
down one channel, so every replica receives, decodes and sequences every
message of every room.  This one routes by room:

* **a channel per room** (``C:room:{R}``), subscribed while the room has a
  member on this replica (``subscriber.py``).  Room broadcasts travel there
  as ready-to-write Socket.IO packets (``frames.py``): a receiving replica
  writes them to its sockets without touching JSON;
* **one control channel** (``C``) that every replica hears, for what the base
  class routes that is not a room broadcast: an emit to a sid held
  elsewhere, or to everyone; the answer to an ack requested through another
  replica (``callback``); ``enter_room``, ``leave_room``, ``disconnect`` and
  ``close_room`` for sids held elsewhere.  JSON, as the library writes it.

One chat message through three replicas, in one Redis round trip::

    client A --ws--> replica 1  ChatNamespace.post
        history.append(room, msg)  # EVALSHA: numbered, stored, and PUBLISHed
                                   # on C:room:{general} as a frame (history.py)
        sio.emit("message", msg, room="general", ignore_queue=True)
                                   # nothing to do: replica 1 hears the room's
                                   # channel (emit), its own copy delivers it
    Redis sends the frame to the replicas subscribed to C:room:{general}
    (those with members there): 1 and 2 have some, 3 has none and hears
    nothing.
    replicas 1, 2  _thread -> _room_frame  # Sequencer: in seq order, once;
                                           # the packet written as it came

A replica's own chat messages thus reach its sockets the way everyone
else's do, from the channel: the copy every publisher gets back anyway
(it is subscribed) replaces writing them at once, which cost encoding the
packet and a pass through the room's line per message.  While a room's
channel is not confirmed (just subscribed, or the subscription is lost)
its messages are written at once as before; the Sequencer drops whichever
copy comes second, and a copy that never comes is read from the history
when the channel is confirmed (``_subscribed_to``).

Presence and typing events ride the room channel too (``_publish`` frames
them), so a room's events keep their order on the way.

Failure handling:

* ``_publish`` raises ``BackplaneUnavailable`` when Redis does not take a
  message (redis-py retries once on a broken connection).  Chat messages are
  in the history by then; the replicas read them from it (``delivery.py``).
* Losing and regaining the subscription are logged once each and counted;
  every room channel is subscribed again with the control channel, and each
  room's line reads from the history what it missed meanwhile.
"""

from __future__ import annotations

import asyncio

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError
from socketio.async_pubsub_manager import AsyncPubSubManager

from ..protocol import RESERVED_ROOM
from ..redis_clients import ping, redis_client, subscriber_client
from ..redis_keys import RedisKeys
from . import frames
from .base import BackplaneUnavailable, Observed
from .shards import Shards
from .subscriber import Subscriber

CONTROL_METHODS = {"emit", "disconnect", "enter_room", "leave_room", "close_room"}


class ManualRedisManager(Observed, AsyncPubSubManager):
    name = "chat-pubsub"

    def __init__(self, url, *, channel, client_name, metrics, logger=None,
                 max_connections=32):
        super().__init__(channel=channel, logger=logger, metrics=metrics)
        self.keys = RedisKeys(channel)
        # PUBLISH and PING on a bounded pool; the subscription on a client
        # of its own, which does not reconnect behind the subscriber's back.
        self.redis = redis_client(url, client_name, max_connections)
        self.sharded = isinstance(self.redis, RedisCluster)
        if self.sharded:  # Redis Cluster: SSUBSCRIBE on each channel's shard
            self.subscriber = Shards(self.redis, client_name, channel, metrics,
                                     self._get_logger(), on_confirmed=self._subscribed_to)
        else:
            self.subscriber = Subscriber(subscriber_client(url, client_name), channel, metrics,
                                         self._get_logger(), on_confirmed=self._subscribed_to)
        self.subscriber.channel_of = self.keys.room_channel
        self._own = f"{self.host_id} ".encode()  # how our own frames start
        self._publish_failing = False
        self._to_refresh: set[str] = set()
        self._refresher: asyncio.Task | None = None

    @property
    def subscribed(self) -> bool:
        return self.subscriber.subscribed

    # -- subscriptions follow the members --------------------------------
    def basic_enter_room(self, sid, namespace, room, eio_sid=None):
        super().basic_enter_room(sid, namespace, room, eio_sid=eio_sid)
        if self._chat_room(namespace, room, sid):
            self.subscriber.want(room)

    def basic_leave_room(self, sid, namespace, room):
        super().basic_leave_room(sid, namespace, room)
        if self._chat_room(namespace, room, sid) and not self.rooms.get(namespace, {}).get(room):
            self.subscriber.drop(room)

    @staticmethod
    def _chat_room(namespace, room, sid) -> bool:
        """A room people talk in (not the None room, nor a sid's own)."""
        return namespace == "/" and isinstance(room, str) and room != sid

    def _subscribed_to(self, rooms: list[str]) -> None:
        """Redis confirmed these rooms' channels: what was published there
        before is read from the history (one batch for all of them)."""
        self._to_refresh.update(rooms)
        if self._refresher is None or self._refresher.done():
            self._refresher = asyncio.ensure_future(self._refresh())

    async def _refresh(self) -> None:
        while self._to_refresh and self.sequencer is not None:
            rooms, self._to_refresh = self._to_refresh, set()
            try:
                await self.sequencer.refresh(rooms)
            except Exception as exc:  # the catch-up loop covers it within a second
                self._get_logger().warning("backplane: reading %d rooms after "
                                           "subscribing failed: %s", len(rooms), exc)

    # -- send ------------------------------------------------------------
    async def emit(self, event, data, namespace=None, room=None, skip_sid=None,
                   callback=None, to=None, **kwargs):
        """A chat message the append script published (``ignore_queue``)
        is written here when its copy comes back from the room's channel,
        if this replica hears that channel (see the module's docstring)."""
        target = to or room
        if (kwargs.get("ignore_queue") and event == "message" and callback is None
                and isinstance(data, dict) and "seq" in data and isinstance(target, str)
                and namespace in (None, "/") and self._hears(target)):
            return None
        return await super().emit(event, data, namespace=namespace, room=room,
                                  skip_sid=skip_sid, callback=callback, to=to, **kwargs)

    def _hears(self, room: str) -> bool:
        """Redis confirmed our subscription to ``room``'s channel (on one
        Redis; on a Cluster, messages are written at once as before)."""
        return not self.sharded and self.keys.room_channel(room) in self.subscriber.confirmed

    async def _publish(self, message):
        room = message.get("room")
        if (message.get("method") == "emit" and not message.get("callback")
                and not message.get("binary") and message.get("namespace") in (None, "/")
                and isinstance(room, str) and not RESERVED_ROOM.fullmatch(room)):
            # A room, not a sid (sid-shaped names are never rooms: protocol.py):
            # an emit to a sid held elsewhere must go where every replica hears.
            data = message["data"]
            packet = self._encode(message["event"], data, "/")
            if packet is not None:
                # A numbered chat message keeps its number, for the receivers' lines.
                numbered = (data[0] if message["event"] == "message" and len(data) == 1
                            and isinstance(data[0], dict) else {})
                await self._send(self.keys.room_channel(room), frames.room_frame(
                    self.host_id, packet, message.get("skip_sid"),
                    numbered.get("seq"), numbered.get("epoch")))
                return
        await self._send(self.channel, self.json.dumps(message))

    async def _send(self, channel: str, payload) -> None:
        try:
            # redis-py retries once on a broken connection (redis_options);
            # on a Cluster the channel's shard takes it (SPUBLISH)
            if self.sharded:
                await self.redis.spublish(channel, payload)
            else:
                await self.redis.publish(channel, payload)
        except (OSError, RedisError) as exc:
            self.metrics.publish_failures.inc()
            if not self._publish_failing:
                self._publish_failing = True
                self._get_logger().warning("backplane: PUBLISH failed: %s", exc)
            raise BackplaneUnavailable(f"Redis is unreachable ({exc})") from None
        self.metrics.published.inc()
        if self._publish_failing:
            self._publish_failing = False
            self._get_logger().info("backplane: PUBLISH works again")

    # -- receive ---------------------------------------------------------
    async def _thread(self):
        while True:  # a listener that dies leaves the replica deaf: never let it
            try:
                await self._listen_forever()
            except asyncio.CancelledError:
                raise
            except Exception:
                self._get_logger().exception("backplane: the listener failed; starting over")
                await asyncio.sleep(1.0)

    async def _listen_forever(self):
        async for channel, payload in self.subscriber.messages():
            try:
                if channel == self.channel:
                    await self._control(payload)
                else:
                    await self._room_frame(channel, payload)
            except asyncio.CancelledError:
                raise
            except Exception:
                self._get_logger().exception("backplane: handling a message from %s "
                                             "failed", channel)

    async def _room_frame(self, channel: str, payload: bytes) -> None:
        room = self.subscriber.wanted.get(channel)
        if room is None:  # nobody here any more (UNSUBSCRIBE on its way)
            return
        frame = frames.parse(payload)
        if frame.seq is not None and self.sequencer is not None:
            # Our own chat messages too (emit); the line drops a second copy.
            await self.sequencer.accept(room, {"seq": frame.seq, "epoch": frame.epoch,
                                               "packet": frame.packet})
            return
        if payload.startswith(self._own):
            return  # an event written to our own sockets when it was sent
        await self._write_packet(frame.packet, "/", room, frame.skip,
                                 counted=frame.seq is not None)

    async def _control(self, payload) -> None:
        message = self.json.loads(payload)
        method = message.get("method") if isinstance(message, dict) else None
        if method == "callback":
            await self._handle_callback(message)  # it checks the host id
        elif method in CONTROL_METHODS and message.get("host_id") != self.host_id:
            await getattr(self, f"_handle_{method}")(message)

    # -- what the rest of the app asks -----------------------------------
    async def ready(self):
        if self.sharded:  # every shard link, and the Cluster's own state (shards.py)
            return await self.subscriber.ready()
        if not self.subscriber.subscribed:
            return False, "not subscribed to the Redis channel"
        if not await ping(self.redis):
            return False, "Redis does not answer PING"
        return True, "subscribed"

    async def close(self):
        await super().close()
        if self._refresher is not None:
            self._refresher.cancel()
            await asyncio.gather(self._refresher, return_exceptions=True)
        if self.sharded:
            await self.subscriber.close()
        else:
            await self.subscriber.redis.aclose()
        await self.redis.aclose()

