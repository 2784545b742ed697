"""The JSON module python-socketio encodes and decodes every packet with.

python-socketio calls ``json.dumps``/``json.loads`` for each packet it sends
or receives, and the Redis backplane encodes each relayed message once more.
orjson does both several times faster than the standard library; this shim
gives it the standard library's face (``dumps`` returns ``str``, and the
keyword arguments python-socketio passes, such as ``separators``, are
accepted and ignored: orjson's output is already compact).

One difference shows at the edges: orjson refuses NaN and Infinity, which
are not JSON, where the standard library accepts them.  A client sending
them gets its packet treated as malformed.
"""

from __future__ import annotations

import orjson

JSONDecodeError = orjson.JSONDecodeError


def dumps(obj, **_ignored) -> str:
    return orjson.dumps(obj).decode()


def loads(data, **_ignored):
    return orjson.loads(data)
