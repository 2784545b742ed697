"""Logging to stdout, one line per event, each naming the replica."""

from __future__ import annotations

import logging
import sys
import time

from .settings import Settings


def setup_logging(settings: Settings) -> logging.Logger:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(
        f"%(asctime)s %(levelname)s [{settings.server_id}] %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    # The libraries' per-packet INFO lines would drown ours.
    for noisy in ("socketio", "engineio", "aiohttp.access", "chat.socketio",
                  "chat.engineio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # aiohttp logs request errors on its own logger, or on gunicorn's error
    # log when it runs under gunicorn's worker.
    for name in ("aiohttp.server", "gunicorn.error"):
        logging.getLogger(name).addFilter(RequestErrorFilter())
    return logging.getLogger("chat")


class RequestErrorFilter(logging.Filter):
    """Turn two expected request errors from aiohttp's log into one line each.

    aiohttp logs any exception that ends a request with a full traceback.
    Two kinds are expected, and a traceback for each would let a client (or
    a drain) fill the logs:

    * an undecodable Engine.IO frame: Engine.IO decodes WebSocket frames
      outside any error handling of its own, so a frame that is not
      Engine.IO at all ("xyz") ends the request (malformed Socket.IO packets
      inside valid frames are handled in chat.server);
    * a connection that closed while a reply was being written to it: a
      client that went away, or our own drain on SIGTERM.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.exc_info or record.exc_info[1] is None:
            return True
        exc = record.exc_info[1]
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        if tb is not None and tb.tb_frame.f_code.co_filename.endswith("engineio/packet.py"):
            message = "malformed Engine.IO frame (%s: %s); connection closed"
            level = logging.WARNING
        elif isinstance(exc, ConnectionResetError):  # aiohttp's ClientConnectionResetError too
            message = "connection closed while writing to it (%s: %s)"
            level = logging.INFO
        else:
            return True
        record.msg, record.args = message, (type(exc).__name__, exc)
        record.exc_info = record.exc_text = None
        record.levelno, record.levelname = level, logging.getLevelName(level)
        return True


class Throttle(logging.Filter):
    """Let each message template through at most once per ``interval`` s;
    the next one that passes says how many were held back."""

    def __init__(self, interval: float):
        super().__init__()
        self.interval = interval
        self.last: dict[str, float] = {}
        self.held: dict[str, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = str(record.msg)
        now = time.monotonic()
        if now - self.last.get(key, -self.interval) < self.interval:
            self.held[key] = self.held.get(key, 0) + 1
            return False
        self.last[key] = now
        held = self.held.pop(key, 0)
        if held:
            record.msg = f"{record.msg} ({held} similar held back)"
        return True
