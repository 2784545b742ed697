"""The HTTP API: how a product's backend talks to the chat (docs/api.md,
docs/openapi.yaml).

Every replica serves it under ``/api/``; NGINX proxies ``/api/`` to them.

* ``POST /api/rooms/{room}/messages`` ``{name, text}`` with an
  ``Idempotency-Key`` header: the message goes through
  ``ChatNamespace.post``, the one way into a room, so it is numbered, stored
  and relayed to every replica's clients exactly like a socket's message;
  the answer is ``201 {room, id, seq}``.  A retry with the same key within
  24 hours gets the first answer again and posts nothing (``api_answers.py``).
* ``GET /api/rooms/{room}/messages?after=N&limit=M``: the room's history
  after number N (at most ``HISTORY_MAX_BYTES`` of it: ``truncated``).
* ``GET /api/rooms/{room}/presence``: people and connections, all replicas.
* ``GET /api/rooms``: live rooms with their people counts.

Every request needs ``Authorization: Bearer <key>`` with a key of
``API_KEYS`` (401 otherwise; 403 when the API is off: no keys), and each key
has its own token bucket on each replica (``API_RATE``/``API_BURST``, 429
with ``Retry-After``).  A body is read up to ``MAX_FRAME_BYTES`` and no
further (413), a text longer than ``MAX_MESSAGE_LENGTH`` is 413 too, and
Redis not answering is 503, and a bug of ours is 500 ``internal error`` (the
traceback goes to the log, never to the client).  Every error is JSON
``{"error": "..."}`` (:func:`api_errors`), so a client never parses an HTML
or plain-text page.
"""

from __future__ import annotations

import functools
import hashlib
import logging

from aiohttp import web
from redis.exceptions import RedisError

from . import jsonio
from .events import ChatNamespace
from .history import HistoryUnavailable
from .protocol import (
    MESSAGE_ID,
    RESERVED_ROOM,
    ProtocolError,
    TokenBucket,
    chat_message,
    clean_name,
    clean_room,
    clean_text,
    within,
)
from .settings import Settings

MAX_IDEMPOTENCY_KEY = 255
DEFAULT_LIMIT = 100
MAX_ROOMS_LISTED = 1000
NO_STORAGE = "the chat's storage (Redis) does not answer; try again"
INTERNAL = "internal error"
log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, error: str, **extra):
        super().__init__(error)
        self.status, self.body = status, {"error": error, **extra}


def answer(status: int, body: dict, **headers) -> web.Response:
    return web.json_response(body, status=status, dumps=jsonio.dumps, headers=headers)


def api_errors(handler):
    """An API handler whose every refusal is JSON ``{error}``: Redis down as
    503, any other exception (a bug) 500, its traceback logged once.

    A wrapper of each API route rather than a middleware: an application
    with a middleware runs every request through it, and a WebSocket keeps
    that frame for its whole life."""

    @functools.wraps(handler)
    async def answered(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            return answer(exc.status, exc.body, **exc.body.pop("headers", {}))
        except (RedisError, OSError, HistoryUnavailable):
            return answer(503, {"error": NO_STORAGE})
        except web.HTTPException as exc:  # raised by aiohttp for a request it refuses
            return answer(exc.status, {"error": exc.reason.lower()})
        except Exception:
            # A bug of ours: its traceback belongs in the log (one record), and
            # nothing of it in the answer, which stays JSON like every other.
            log.exception("api: %s %s failed: internal error", request.method,
                          request.path[:100])
            return answer(500, {"error": INTERNAL})

    return answered


class Api:
    def __init__(self, settings: Settings, namespace: ChatNamespace, answers,
                 logger: logging.Logger):
        self.settings = settings
        self.namespace = namespace
        self.answers = answers
        self.log = logger
        # Keys by their hash: the keys themselves are kept nowhere else.
        self.buckets = {_digest(key): TokenBucket(settings.api_rate, settings.api_burst)
                        for key in settings.api_keys}

    def caller(self, request: web.Request) -> str:
        """The hash of the request's API key, once it passed its rate limit."""
        if not self.buckets:
            raise ApiError(403, "the HTTP API is off on this chat (no API_KEYS)")
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise ApiError(401, "an API key is required: Authorization: Bearer <key>")
        caller = _digest(key.strip())
        bucket = self.buckets.get(caller)
        if bucket is None:
            raise ApiError(401, "unknown API key")
        if not bucket.take():
            wait = max(1, round(1 / self.settings.api_rate))
            raise ApiError(429, "rate limit: too many requests with this API key",
                           headers={"Retry-After": str(wait)})
        return caller

    @staticmethod
    def room(request: web.Request) -> str:
        raw = request.match_info["room"]
        if RESERVED_ROOM.fullmatch(raw.strip()):
            raise ApiError(403, "room names of exactly 20 letters, digits, '-' or '_' are "
                           "reserved (they are connections' own rooms)")
        try:
            return clean_room(raw)
        except ProtocolError as exc:
            raise ApiError(400, str(exc)) from None

    async def post_message(self, request: web.Request) -> web.Response:
        caller = self.caller(request)
        room = self.room(request)
        idempotency = request.headers.get("Idempotency-Key", "")
        if not (0 < len(idempotency) <= MAX_IDEMPOTENCY_KEY and idempotency.isascii()
                and idempotency.isprintable()):
            raise ApiError(400, f"an Idempotency-Key header is required: 1 to "
                           f"{MAX_IDEMPOTENCY_KEY} printable ASCII characters")
        name, text = await self._read_message(request)
        attempt = hashlib.sha256(f"{caller}\n{idempotency}".encode()).hexdigest()[:40]
        request_print = _digest(jsonio.dumps([room, name, text]))
        kept = await self.answers.get(attempt)
        if kept is not None:
            return self._replay(kept, request_print)
        mid = f"api-{attempt[:32]}"
        assert MESSAGE_ID.fullmatch(mid)
        message = chat_message(room=room, name=name, text=text,
                               server=self.settings.server_id, id=mid)
        ack = await self.namespace.post(room, message)
        if not ack["ok"]:
            # Not remembered: a retry with the same key may yet succeed, and
            # if this one was stored after all, the retry finds it by its id.
            extra = {"unknown": True} if ack.get("unknown") else {}
            raise ApiError(503, ack["error"], **extra)
        body = {"room": room, "id": ack["id"], "seq": ack["seq"]}
        kept = await self.answers.keep(attempt, {"body": body, "print": request_print})
        if ack.get("duplicate") or kept["body"] != body:
            return self._replay(kept, request_print)
        self.log.info("api: message %s in %r (seq %s) by %r", mid, room, ack["seq"], name)
        return answer(201, body)

    @staticmethod
    def _replay(kept: dict, request_print: str) -> web.Response:
        if kept["print"] != request_print:
            raise ApiError(400, "this Idempotency-Key was used for another request "
                           "(another room, name or text)")
        return answer(201, kept["body"], **{"Idempotent-Replayed": "true"})

    async def _read_message(self, request: web.Request) -> tuple[str, str]:
        most = self.settings.max_frame_bytes
        if (request.content_length or 0) > most:
            raise ApiError(413, f"the body is larger than {most} bytes")
        raw = await request.content.read(most + 1)
        if len(raw) > most:
            raise ApiError(413, f"the body is larger than {most} bytes")
        try:
            payload = jsonio.loads(raw)
        except ValueError as exc:
            raise ApiError(400, f"the body must be JSON {{name, text}}: {exc}") from None
        if not isinstance(payload, dict):
            raise ApiError(400, "the body must be a JSON object {name, text}")
        text, longest = payload.get("text"), self.settings.max_message_length
        if isinstance(text, str) and len(text.strip()) > longest:
            raise ApiError(413, f"message text is longer than {longest} characters")
        try:
            return clean_name(payload.get("name")), clean_text(payload, longest)
        except ProtocolError as exc:
            raise ApiError(400, str(exc)) from None

    async def get_messages(self, request: web.Request) -> web.Response:
        self.caller(request)
        room = self.room(request)
        after = _query_int(request, "after", 0, 0, 2**53 - 1)
        limit = _query_int(request, "limit", DEFAULT_LIMIT, 1, self.settings.history_length)
        piece = await self.namespace.history.since(room, after, limit)
        messages = within(piece.messages, self.settings.history_max_bytes)
        return answer(200, {"room": room, "epoch": piece.epoch, "seq": piece.last,
                            "messages": messages,
                            "truncated": messages is not piece.messages})

    async def get_presence(self, request: web.Request) -> web.Response:
        self.caller(request)
        room = self.room(request)
        people, count, connections = await self.namespace.presence.members(room, strict=True)
        return answer(200, {"room": room, "people": people, "count": count,
                            "connections": connections})

    async def get_rooms(self, request: web.Request) -> web.Response:
        self.caller(request)
        limit = _query_int(request, "limit", DEFAULT_LIMIT, 1, MAX_ROOMS_LISTED)
        rooms = await self.namespace.presence.rooms(limit)
        return answer(200, {"rooms": [{"room": r, "people": n} for r, n in rooms]})

    async def not_found(self, request: web.Request) -> web.Response:
        raise ApiError(404, f"no such API: {request.method} {request.path[:100]}")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _query_int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise ApiError(400, f"{name} must be a whole number from {low} to {high}")
    return int(raw)


def setup_api(app: web.Application, api: Api) -> None:
    app.router.add_post("/api/rooms/{room}/messages", api_errors(api.post_message))
    app.router.add_get("/api/rooms/{room}/messages", api_errors(api.get_messages))
    app.router.add_get("/api/rooms/{room}/presence", api_errors(api.get_presence))
    app.router.add_get("/api/rooms", api_errors(api.get_rooms))
    # Any other path or method under /api/: a JSON 404, not aiohttp's page.
    app.router.add_route("*", "/api/{tail:.*}", api_errors(api.not_found))
