"""python-socketio's AsyncServer: hardened against malformed packets, and
with WebSocket compression off.

The library decodes each Engine.IO message into a Socket.IO packet and
dispatches it; a frame that does not decode ("42[", "45x-[]", an event
packet with no event name...) raises from deep inside, and Engine.IO logs a
full traceback for every such frame.  One hostile client could then fill the
logs.  Here a malformed frame costs one warning line, and the connection
that sent it is closed: a client that speaks broken Socket.IO is either
buggy or hostile, and in both cases talking on helps no one.
"""

from __future__ import annotations

import socketio
from aiohttp import web
from engineio.async_drivers import aiohttp as eio_aiohttp


class UncompressedWebSocket(eio_aiohttp.WebSocket):
    """Engine.IO's aiohttp WebSocket, without permessage-deflate.

    Browsers offer compression and aiohttp accepts it by default, which
    costs a zlib pass per frame per recipient; chat frames are a few hundred
    bytes, where deflate saves little and fan-out multiplies its cost.
    """

    async def __call__(self, environ):
        request = environ["aiohttp.request"]
        self._sock = web.WebSocketResponse(
            max_msg_size=self.server.max_http_buffer_size, compress=False)
        await self._sock.prepare(request)
        self.environ = environ
        await self.handler(self)
        return self._sock


class ChatServer(socketio.AsyncServer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # The driver table is shared by every Engine.IO server in the
        # process; this server gets its own copy.
        self.eio._async = {**self.eio._async, "websocket": UncompressedWebSocket}

    async def _handle_eio_message(self, eio_sid, data):
        try:
            await super()._handle_eio_message(eio_sid, data)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
            # What decoding a broken packet raises (json's errors are
            # ValueErrors); the chat's own handlers catch their errors.
            self._binary_packet.pop(eio_sid, None)
            sample = data[:40] if isinstance(data, str | bytes) else type(data).__name__
            self.logger.warning("malformed packet from %s (%s: %s): %r; closing it",
                                eio_sid, type(exc).__name__, exc, sample)
            await self.eio.disconnect(eio_sid)
