"""The JSON module python-socketio encodes and decodes every packet with.

python-socketio calls ``json.dumps``/``json.loads`` for each packet it sends
or receives, and the Redis backplane encodes each relayed message once more.
orjson does both several times faster than the standard library; this shim
gives it the standard library's face (``dumps`` returns ``str``; keyword
arguments such as ``separators`` are accepted and ignored, orjson's output
being compact already).

Where orjson is stricter than the standard library (integers beyond 64 bits,
NaN and Infinity from a client), the standard library takes over, so every
payload the service used to accept is still accepted; only the rare
payload pays for the second attempt.
"""

from __future__ import annotations

import json

import orjson


def dumps(obj, **_ignored) -> str:
    try:
        return orjson.dumps(obj).decode()
    except TypeError:  # e.g. an integer beyond 64 bits
        return json.dumps(obj, separators=(",", ":"))


def loads(data, **_ignored):
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)  # accepts what orjson refuses, or raises too
