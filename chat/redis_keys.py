"""Every Redis key and channel the chat uses, named in one place.

All of them start with ``REDIS_CHANNEL`` (``C`` below, ``chat:messages`` by
default), so two chats can share one Redis without meeting.  For a room R::

    C                    channel  the backplane: every replica publishes and
                                  subscribes here (both modes)
    C:room:{R}:meta      hash     the room's epoch and latest number (history.py)
    C:room:{R}:log       stream   the room's messages, <seq>-0 -> {m: JSON}
    C:room:{R}:ids       zset     message id -> number, for the messages the
                                  log holds: a retried id is stored once
    C:room:{R}:presence  zset     [id, name] -> expiry (ms) (presence.py)
    C:replicas           hash     server id -> its health (replicas.py)

How long each lives is up to the module that writes it; a room's keys all
expire when the room goes quiet.

``{R}`` is the room's *hash tag* (:func:`hash_tag`): Redis Cluster places a
key by the text between its first ``{`` and the next ``}``, so every key of
one room lands in one slot, and the scripts and transactions that touch
several of them run there.  ``REDIS_CHANNEL`` may hold no brace (settings),
so the room's ``{`` is always the key's first one.
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
