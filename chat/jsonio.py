"""The JSON module python-socketio encodes and decodes every packet with.

python-socketio calls ``json.dumps``/``json.loads`` for each packet it sends
or receives, and the Redis backplane encodes each relayed message once more.
orjson does both several times faster than the standard library; this shim
gives it the standard library's face (``dumps`` returns ``str``; keyword
arguments such as ``separators`` are accepted and ignored, orjson's output
being compact already).

Decoding is one library with one set of rules, because what it decodes is
mostly a client's input: orjson alone, and values nested deeper than
``MAX_DEPTH`` are refused.  Whatever is refused (bad syntax, NaN and
Infinity, nesting too deep) raises ``ValueError`` with a short reason, which
the server turns into one log line and a closed connection
(``chat/server.py``).  orjson reads an integer beyond 64 bits as a float:
accepted here, refused by the protocol wherever a string is due.  There is
no second attempt with the standard library: it would accept what orjson
refuses, so the rules would depend on which library ran, and its recursive
decoder raises ``RecursionError`` (not a ``ValueError``) on deep nesting.
The chat's own messages are a few levels deep.

Encoding falls back to the standard library for the rare value orjson
cannot write; the server's own data is what gets encoded.
"""

from __future__ import annotations

import json

import orjson

# Deepest nesting a decoded value may have: a chat packet is at most
# ["event", {"key": [...]}], four levels; 32 leaves room for any honest use.
MAX_DEPTH = 32


class RefusedJSON(ValueError):
    """A payload this service does not decode (a ValueError, as json's are)."""


def dumps(obj, **_ignored) -> str:
    try:
        return orjson.dumps(obj).decode()
    except TypeError:  # e.g. an integer beyond 64 bits
        return json.dumps(obj, separators=(",", ":"))


def loads(data, **_ignored):
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        # orjson's own words, shortened: "unexpected character", "recursion
        # limit exceeded", "number out of range"...
        raise RefusedJSON(f"not accepted JSON: {str(exc).split(':')[0][:80]}") from None
    if isinstance(value, list | dict) and _too_deep(value):
        raise RefusedJSON(f"not accepted JSON: nested deeper than {MAX_DEPTH} levels")
    return value


def loads_own(data):
    """Decode what this service wrote itself (Redis entries of the history and
    presence): no depth check, which costs more than the decoding."""
    return orjson.loads(data)


def _too_deep(value) -> bool:
    """Whether ``value`` nests lists and objects deeper than ``MAX_DEPTH``
    (iterative: no recursion for a client to exhaust)."""
    level = [value]
    for _ in range(MAX_DEPTH):
        inner = []
        for item in level:
            children = item.values() if isinstance(item, dict) else item
            inner.extend(c for c in children if isinstance(c, list | dict))
        if not inner:
            return False
        level = inner
    return True
