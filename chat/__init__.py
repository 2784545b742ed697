"""A horizontally scaled Socket.IO chat: N replicas, one conversation.

Each replica is an aiohttp application mounting a python-socketio server
(``chat.app``).  What one replica's client says reaches every other replica's
clients through a Redis backplane (``chat.backplane``), in one of two modes
chosen by ``REDIS_MODE``.  Configuration is read once (``chat.settings``).
"""

__version__ = "0.1.0"
