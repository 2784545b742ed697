"""One node, no Redis: python-socketio's in-process manager, counted."""

from __future__ import annotations

import socketio

from .base import Observed


class MemoryManager(Observed, socketio.AsyncManager):
    def __init__(self, *, metrics, logger=None):
        super().__init__(metrics=metrics)
        self.logger = logger

    async def emit(self, event, data, namespace, room=None, skip_sid=None,
                   callback=None, to=None, **kwargs):
        room = to or room
        if callback is None:
            # the library's convention: a tuple is several arguments
            args = list(data) if isinstance(data, tuple) else [] if data is None else [data]
            if await self._sequenced(event, args, namespace, room):
                return
            if await self._deliver(event, args, namespace, room, skip_sid) is not None:
                return
        self._count_local(event, namespace, room, skip_sid)
        return await super().emit(event, data, namespace, room=room,
                                  skip_sid=skip_sid, callback=callback)
