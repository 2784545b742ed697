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
        logging.getLogger(name).addFilter(MalformedFrameFilter())
    return logging.getLogger("chat")


class MalformedFrameFilter(logging.Filter):
    """Turn aiohttp's traceback for an undecodable Engine.IO frame into one line.

    Engine.IO decodes WebSocket frames outside any error handling of its own,
    so a frame that is not Engine.IO at all ("xyz") ends the request with an
    exception that aiohttp logs in full.  The connection is closed either
    way; one warning line is enough, and keeps a hostile client from filling
    the logs with tracebacks.  (Malformed Socket.IO packets inside valid
    frames are handled in chat.server.)
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.exc_info or record.exc_info[1] is None:
            return True
        exc = record.exc_info[1]
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        if tb is None or not tb.tb_frame.f_code.co_filename.endswith("engineio/packet.py"):
            return True
        record.msg = "malformed Engine.IO frame (%s: %s); connection closed"
        record.args = (type(exc).__name__, exc)
        record.exc_info = None
        record.exc_text = None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
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
