"""Choosing the backplane: one factory, three small managers.

A python-socketio *client manager* decides where an emit goes.  The three
kinds this service can run with all present the same face to the rest of the
code (the event handlers only ever call ``sio.emit``), so nothing outside this
package knows which one is running:

``memory``    no ``REDIS_URL``: one node, python-socketio's in-process manager.
``socketio``  the "automatic" mode: python-socketio's own ``AsyncRedisManager``
              (see ``automatic.py``), used as the library ships it.
``pubsub``    the "manual" mode: ``manual.py``, our own subclass of the same
              base class that does PUBLISH/SUBSCRIBE itself, to show what the
              automatic mode hides and to control reconnection.

Every manager also answers :meth:`ready` (is the backplane usable right now?)
for ``/readyz``, counts what it does in the replica's metrics, holds at most
``REDIS_MAX_CONNECTIONS`` Redis connections (``chat/redis_clients.py``), and raises
:class:`BackplaneUnavailable` from ``emit`` when a message reached this
replica's clients but could not be relayed to the others.
"""

from __future__ import annotations

from ..metrics import Metrics
from ..redis_clients import client_name
from ..settings import Settings
from .base import BackplaneUnavailable, Observed


def create_manager(settings: Settings, metrics: Metrics, logger) -> Observed:
    """Return the client manager that ``settings`` ask for."""
    if settings.mode == "memory":
        from .memory import MemoryManager

        return MemoryManager(metrics=metrics, logger=logger)
    if settings.mode == "pubsub":
        from .manual import ManualRedisManager

        return ManualRedisManager(
            settings.redis_url, channel=settings.redis_channel,
            client_name=client_name(settings.server_id), metrics=metrics, logger=logger,
            max_connections=settings.redis_max_connections,
        )
    from .automatic import AutomaticRedisManager

    return AutomaticRedisManager(
        settings.redis_url, channel=settings.redis_channel,
        client_name=client_name(settings.server_id), metrics=metrics, logger=logger,
        max_connections=settings.redis_max_connections,
    )


__all__ = ["BackplaneUnavailable", "Observed", "create_manager"]
