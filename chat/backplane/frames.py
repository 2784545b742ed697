"""What crosses a room's channel in pubsub mode, and how it is read.

A room channel (``C:room:{R}``, ``redis_keys.py``) carries only broadcasts
to that room, in a form a receiving replica can hand to its sockets without
decoding or encoding any JSON::

    <host id> <seq> <epoch> <skip> <packet>

``host id``   the publishing replica's python-socketio ``host_id``: it
              delivered to its own sockets already, and skips the echo;
``seq``, ``epoch``  a chat message's number and its room's epoch
              (``history.py``), for the room's line (``delivery.py``);
              ``-`` for events that are not numbered (presence, typing);
``skip``      sids not to write to, comma-separated (``skip_sid``), or ``-``;
``packet``    the Socket.IO packet exactly as the sockets get it, e.g.
              ``2["message",{"id":...,"seq":7,"epoch":"ab12cd34"}]``.

Chat messages are written in this form by the append script itself
(``history.APPEND``), in the same call that numbers and stores them (or, when
the ack waits for Redis replicas, by :func:`room_frame` once they have it);
other room broadcasts by :func:`room_frame`.  The first four fields are plain
tokens (hex, digits, base64url sids) and never hold a space, so a frame
splits on its first four spaces.
"""

from __future__ import annotations

import typing

NONE = "-"


class Frame(typing.NamedTuple):
    host: str
    seq: int | None
    epoch: str | None
    skip: tuple[str, ...]
    packet: str


def room_frame(host_id: str, packet: str, skip_sid=None, seq: int | None = None,
               epoch: str | None = None) -> str:
    """A room broadcast written by a replica (chat messages are written by
    the append script, unless the ack waits for Redis replicas first)."""
    if not skip_sid:
        skip = NONE
    elif isinstance(skip_sid, str):
        skip = skip_sid
    else:
        skip = ",".join(skip_sid)
    numbered = seq is not None and epoch is not None
    return (f"{host_id} {seq if numbered else NONE} {epoch if numbered else NONE} "
            f"{skip} {packet}")


def parse(data: bytes | str) -> Frame:
    """Read a frame; ValueError when ``data`` is not one."""
    text = data.decode() if isinstance(data, bytes) else data
    host, seq, epoch, skip, packet = text.split(" ", 4)
    return Frame(
        host,
        None if seq == NONE else int(seq),
        None if epoch == NONE else epoch,
        () if skip == NONE else tuple(skip.split(",")),
        packet,
    )
