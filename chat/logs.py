"""Logging to stdout, one line per event, each naming the replica."""

from __future__ import annotations

import logging
import sys

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
    return logging.getLogger("chat")
