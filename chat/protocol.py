"""The chat protocol's rules, as pure functions.

Everything a client sends passes through here before the event handlers act
on it, so the rules (what a name, a room and a message may be) live in one
place and can be tested without a server.  Each check either returns the
cleaned value or raises :class:`ProtocolError` with a sentence a client can
show to its user.
"""

from __future__ import annotations

import os
import re
import time

from . import jsonio

DEFAULT_ROOM = "general"
MAX_NAME_LENGTH = 32
MAX_ROOM_LENGTH = 32
MAX_EPOCH_LENGTH = 32
MESSAGE_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")
# C0 controls but tab, line feed and carriage return; DEL; C1 controls.
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
# python-socketio puts every connection in a room named after its sid (20
# characters of base64url: Engine.IO's generate_id); a chat room of such a
# name would deliver into, or fail to enter, someone's private room.
RESERVED_ROOM = re.compile(r"[A-Za-z0-9_-]{20}")
RESERVED = ("room names of exactly 20 letters, digits, '-' or '_' are reserved "
            "(they look like connection ids)")


class ProtocolError(ValueError):
    """A client sent something the protocol does not allow."""


def clean_name(value) -> str:
    if not isinstance(value, str):
        raise ProtocolError("a name is required (auth.name, a string)")
    name = value.strip()
    if not 1 <= len(name) <= MAX_NAME_LENGTH:
        raise ProtocolError(f"name must be 1 to {MAX_NAME_LENGTH} characters")
    if not name.isprintable():
        raise ProtocolError("name must contain printable characters only")
    return name


def clean_room(value) -> str:
    if value is None:
        return DEFAULT_ROOM
    if not isinstance(value, str):
        raise ProtocolError("room must be a string")
    room = value.strip()
    if not 1 <= len(room) <= MAX_ROOM_LENGTH:
        raise ProtocolError(f"room must be 1 to {MAX_ROOM_LENGTH} characters")
    if not room.isprintable():
        raise ProtocolError("room must contain printable characters only")
    if RESERVED_ROOM.fullmatch(room):
        raise ProtocolError(RESERVED)
    return room


def parse_auth(auth) -> tuple[str, str, tuple[str, int] | None]:
    """Return ``(name, room, resume)`` from a connection's auth payload."""
    room, resume = parse_place(auth)
    return clean_name(auth.get("name")), room, resume


def parse_place(auth) -> tuple[str, tuple[str, int] | None]:
    """Return ``(room, resume)`` from a connection's auth payload (who is
    connecting is ``auth.py``'s business)."""
    if not isinstance(auth, dict):
        raise ProtocolError('connect with auth {"name": ..., "room": ...}')
    return clean_room(auth.get("room")), parse_resume(auth.get("resume"))


def parse_resume(value) -> tuple[str, int] | None:
    """Return ``(epoch, seq)`` from a ``resume`` field, or None when absent.

    A client that reconnects sends the position of the last message it saw
    (``{"epoch": "...", "seq": 41}``) to be sent what it missed."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ProtocolError('resume must be an object like {"epoch": "...", "seq": 41}')
    epoch, seq = value.get("epoch"), value.get("seq")
    if not isinstance(epoch, str) or not 1 <= len(epoch) <= MAX_EPOCH_LENGTH:
        raise ProtocolError(f"resume.epoch must be a string of 1 to {MAX_EPOCH_LENGTH} "
                            "characters")
    if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq < 2**53:
        raise ProtocolError("resume.seq must be a whole number >= 0")
    return epoch, seq


def history_after(payload) -> int:
    """Return the sequence number a ``history`` request asks to continue."""
    after = payload.get("after") if isinstance(payload, dict) else None
    if isinstance(after, bool) or not isinstance(after, int) or not 0 <= after < 2**53:
        raise ProtocolError('history needs {"after": <sequence number>}')
    return after


def clean_text(payload, max_length: int) -> str:
    """Return the trimmed text of a ``message`` event's payload."""
    if not isinstance(payload, dict):
        raise ProtocolError('message must be an object like {"text": "..."}')
    text = payload.get("text")
    if not isinstance(text, str):
        raise ProtocolError("message text must be a string")
    text = text.strip()
    if not text:
        raise ProtocolError("message text is empty")
    if len(text) > max_length:
        raise ProtocolError(f"message text is longer than {max_length} characters")
    if CONTROL.search(text):
        raise ProtocolError("message text must not contain control characters "
                            "(line breaks and tabs are fine)")
    return text


def typing_flag(payload) -> bool:
    """Return the flag of a ``typing`` event: ``{"typing": true|false}``."""
    value = payload.get("typing") if isinstance(payload, dict) else None
    if not isinstance(value, bool):
        raise ProtocolError('typing needs {"typing": true} or {"typing": false}')
    return value


def message_id(payload) -> str:
    """The id a client gave its message, or a new one.

    The id is the message's idempotency key (``history.py``): a client that
    got no definite answer sends the message again with the same id, and it
    is stored once.  A client that sends none cannot retry safely."""
    value = payload.get("id") if isinstance(payload, dict) else None
    if value is None:
        return random_hex(16)
    if not isinstance(value, str) or not MESSAGE_ID.fullmatch(value):
        raise ProtocolError("message id must be 8 to 64 letters, digits, '-' or '_'")
    return value


class _Random:
    """Random bytes read from the system 4 KiB at a time: a message id and
    a room epoch each cost a slice of them, not a system call (each chat
    message needs an id, and its append an epoch in case its room has none)."""

    pool, used = b"", 0

    @classmethod
    def hex(cls, size: int) -> str:
        if cls.used + size > len(cls.pool):
            cls.pool, cls.used = os.urandom(4096), 0
        start = cls.used
        cls.used += size
        return cls.pool[start:cls.used].hex()

    @classmethod
    def forget(cls) -> None:
        cls.pool, cls.used = b"", 0


os.register_at_fork(after_in_child=_Random.forget)  # a child draws its own
random_hex = _Random.hex


def room_of(payload) -> str:
    """Return the room named by a ``join`` event's payload."""
    if not isinstance(payload, dict) or "room" not in payload:
        raise ProtocolError('join needs {"room": "..."}')
    return clean_room(payload["room"])


def now_ms() -> int:
    return int(time.time() * 1000)


def chat_message(*, room: str, name: str, text: str, server: str, id: str) -> dict:
    return {
        "id": id,
        "room": room,
        "name": name,
        "text": text,
        "server": server,
        "ts": now_ms(),
    }


class TokenBucket:
    """Allow ``rate`` events per second with bursts of up to ``burst``."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: int):
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def take(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


def within(messages: list[dict], max_bytes: int, newest: bool = False) -> list[dict]:
    """The oldest messages (or with ``newest`` the newest) whose JSON adds
    up to at most ``max_bytes``, in order; never fewer than one, so an
    answer cut this way always moves its reader forward.  One answer then
    costs at most ``max_bytes`` (``HISTORY_MAX_BYTES``) however long the
    room's messages are."""
    order = reversed(messages) if newest else iter(messages)
    total = count = 0
    for message in order:
        total += len(jsonio.dumps(message).encode())
        if total > max_bytes and count:
            break
        count += 1
    if count == len(messages):
        return messages
    return messages[-count:] if newest else messages[:count]
