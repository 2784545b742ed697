"""Every Redis key and channel the chat uses, named in one place.

All of them start with ``REDIS_CHANNEL`` (``C`` below, ``chat:messages`` by
default), so two chats can share one Redis without meeting.  For a room R::

    C                    channel  socketio mode: the library's one channel,
                                  every replica publishes and subscribes here;
                                  pubsub mode: the control channel, for what
                                  is not a room broadcast (backplane/manual.py)
    C:room:{R}           channel  pubsub mode: the room's broadcasts, heard
                                  only by replicas with members in R
    C:room:{R}:meta      hash     the room's epoch and latest number (history.py)
    C:room:{R}:log       stream   the room's messages, <seq>-0 -> {m: JSON}
    C:room:{R}:ids       zset     message id -> number, for the messages the
                                  log holds: a retried id is stored once
    C:room:{R}:presence  zset     person [id, name] -> expiry (ms) (presence_store.py)
    C:room:{R}:connections zset     "<connection>\n<person>" -> expiry (ms)
    C:room:{R}:counts      hash     person -> its connections in the room
    C:room:{R}:names       hash     name's fold -> person holding it (open mode)
    C:rooms              zset     room -> expiry (ms): rooms with people in them
    C:admin:watching     string   an Admin UI is connected somewhere (admin.py), 60 s
    C:api:idem:K         string   the HTTP API's first answer to Idempotency-Key K
                                  (K: a hash of the API key and the header), 24 h
    C:replicas           hash     server id -> its health (replicas.py)
    C:session:P          string   the recoverable session of private id P
                                  (session_store.py), the recovery window
    C:alive:I            string   replica instance I is running, 2 s (session_store.py)

``{R}`` is the room's *hash tag* (:func:`hash_tag`): Redis Cluster places a
key, and a shard channel, by the text between its first ``{`` and the next
``}``, so every key of one room and its channel land in one slot: the
scripts and transactions that touch several keys run there, and the script
that stores a message can publish it there too.  ``REDIS_CHANNEL`` may hold
no brace (settings), so the room's ``{`` is always the key's first one.
How long each lives is up to the module that writes it; a room's keys all
expire when the room goes quiet.
"""

from __future__ import annotations

import dataclasses


def hash_tag(room: str) -> str:
    """``{room}``, with ``%`` and ``}`` written as ``%25`` and ``%7D``.

    A ``}`` inside the name would end the tag early (a room named ``}x``
    would even get the empty tag, which Redis ignores, scattering the room's
    keys over the cluster); the escape keeps the tag whole and distinct
    rooms' tags distinct.
    """
    return "{" + room.replace("%", "%25").replace("}", "%7D") + "}"


@dataclasses.dataclass(frozen=True)
class RedisKeys:
    prefix: str  # REDIS_CHANNEL

    @property
    def channel(self) -> str:
        return self.prefix

    @property
    def replicas(self) -> str:
        return f"{self.prefix}:replicas"

    def room_channel(self, room: str) -> str:
        return f"{self.prefix}:room:{hash_tag(room)}"

    def _room(self, room: str, what: str) -> str:
        return f"{self.prefix}:room:{hash_tag(room)}:{what}"

    def room_meta(self, room: str) -> str:
        return self._room(room, "meta")

    def room_log(self, room: str) -> str:
        return self._room(room, "log")

    def room_ids(self, room: str) -> str:
        return self._room(room, "ids")

    def room_presence(self, room: str) -> str:
        return self._room(room, "presence")

    def room_connections(self, room: str) -> str:
        return self._room(room, "connections")

    def room_counts(self, room: str) -> str:
        return self._room(room, "counts")

    def room_names(self, room: str) -> str:
        return self._room(room, "names")

    @property
    def rooms(self) -> str:
        return f"{self.prefix}:rooms"

    @property
    def admin_watching(self) -> str:
        return f"{self.prefix}:admin:watching"

    def session(self, pid: str) -> str:
        return f"{self.prefix}:session:{pid}"

    def alive(self, instance: str) -> str:
        return f"{self.prefix}:alive:{instance}"

    def api_answer(self, key: str) -> str:
        return f"{self.prefix}:api:idem:{key}"
