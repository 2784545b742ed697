"""python-socketio's AsyncServer, hardened against malformed packets.

The library decodes each Engine.IO message into a Socket.IO packet and
dispatches it; a frame that does not decode ("42[", "45x-[]", an event
packet with no event name...) raises from deep inside, and Engine.IO logs a
full traceback for every such frame.  One hostile client could then fill the
logs.  Here a malformed frame costs one warning line, and the connection
that sent it is closed: a client that speaks broken Socket.IO is either
buggy or hostile, and in both cases talking on helps no one.
"""

from __future__ import annotations

import asyncio

import socketio


class ChatServer(socketio.AsyncServer):
    async def _handle_eio_message(self, eio_sid, data):
        try:
            await super()._handle_eio_message(eio_sid, data)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._binary_packet.pop(eio_sid, None)
            sample = data[:40] if isinstance(data, str | bytes) else type(data).__name__
            self.logger.warning("malformed packet from %s (%s: %s): %r; closing it",
                                eio_sid, type(exc).__name__, exc, sample)
            await self.eio.disconnect(eio_sid)
