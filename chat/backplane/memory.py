"""One node, no Redis: python-socketio's in-process manager, counted."""

from __future__ import annotations

import socketio

from .base import Observed


class MemoryManager(Observed, socketio.AsyncManager):
    mode = "memory"

    def __init__(self, *, metrics, logger=None):
        super().__init__(metrics=metrics)
        self.logger = logger

    async def emit(self, event, data, namespace, room=None, skip_sid=None,
                   callback=None, to=None, **kwargs):
        room = to or room
        self._count_local(event, namespace, room, skip_sid)
        return await super().emit(event, data, namespace, room=room,
                                  skip_sid=skip_sid, callback=callback)
