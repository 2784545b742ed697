"""Logging to stdout, one line per event, each naming the replica.

``LOG_FORMAT=text`` (the default) writes readable lines; ``LOG_FORMAT=json``
one JSON object per line (:class:`JsonFormatter`: ``ts``, ``level``,
``server``, ``logger``, ``message``, and ``exc`` with the traceback), for log
pipelines.  gunicorn's own lines get the same format (``deploy/gunicorn.conf.py``
configures its logger with :class:`JsonFormatter`).

What one client causes is bounded here too: :class:`ClientLog` lets a few
lines per client through per minute and then one summary, so a flood from
one address writes a handful of lines while another client's line still
gets through; :func:`quiet_accept_errors` turns the event loop's "cannot
accept" report at the file-descriptor limit into one line per interval.
"""

from __future__ import annotations

import datetime
import errno
import logging
import sys
import time

from . import jsonio
from .settings import Settings


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def __init__(self, server_id: str):
        super().__init__()
        self.server_id = server_id

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"),
            "level": record.levelname,
            "server": self.server_id,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return jsonio.dumps(line)


def formatter(settings: Settings) -> logging.Formatter:
    if settings.log_format == "json":
        return JsonFormatter(settings.server_id)
    return logging.Formatter(
        f"%(asctime)s %(levelname)s [{settings.server_id}] %(name)s: %(message)s")


def setup_logging(settings: Settings) -> logging.Logger:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter(settings))
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

    The first kind is also throttled (one line a second, with the count held
    back): each such frame costs its sender only a reconnection.
    """

    def __init__(self):
        super().__init__()
        self.throttle = Throttle(interval=1.0)

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
        return level == logging.INFO or self.throttle.filter(record)


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


def client_address(environ) -> str:
    """A client's address as NGINX saw it (X-Real-IP), else the peer's.

    Not the first X-Forwarded-For entry: the client writes that one."""
    return environ.get("HTTP_X_REAL_IP") or environ.get("REMOTE_ADDR", "?")


class ClientLog:
    """Warnings caused by clients: at most ``burst`` lines per client per
    ``interval`` s, then one line saying the rest is held back, and the count
    held back with that client's first line of the next interval.

    Keyed by the client's address, so one client's flood does not silence
    another's line.  The address is X-Real-IP when there is one, which NGINX
    sets; a client that reaches a replica directly could write a new one per
    connection, so all clients together are held to ``total`` lines per
    interval as well.  At most ``clients`` addresses are remembered (the
    oldest are forgotten first), so the bookkeeping is bounded too.
    """

    EVERYONE = "all clients"

    def __init__(self, logger: logging.Logger, burst: int = 10, total: int = 200,
                 interval: float = 60.0, clients: int = 10_000):
        self.logger = logger
        self.limits = {self.EVERYONE: total}
        self.burst = burst
        self.interval = interval
        self.clients = clients
        self.windows: dict[str, list] = {}  # address -> [start, lines, held]

    def warning(self, client: str, msg: str, *args) -> None:
        if self._admit(client) and self._admit(self.EVERYONE):
            self.logger.warning(msg, *args)

    def _admit(self, key: str) -> bool:
        now = time.monotonic()
        window = self.windows.get(key)
        if window is None or now - window[0] >= self.interval:
            if window is not None and window[2]:
                self.logger.warning("%d more lines caused by %s were held back", window[2], key)
            self.windows.pop(key, None)
            if len(self.windows) >= self.clients:
                del self.windows[next(k for k in self.windows if k != self.EVERYONE)]
            window = self.windows[key] = [now, 0, 0]
        if window[1] < self.limits.get(key, self.burst):
            window[1] += 1
            return True
        window[2] += 1
        if window[2] == 1:
            self.logger.warning("too many lines caused by %s: holding its lines back for "
                                "%.0f s", key, self.interval - (now - window[0]))
        return False


# What accept() fails with when the process or the system is out of file
# descriptors or memory; the loop retries the accept every second or so.
ACCEPT_EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def quiet_accept_errors(loop, logger: logging.Logger, interval: float = 10.0) -> None:
    """Report accept() failures for want of descriptors once per ``interval``.

    asyncio's loop reports each failed accept through the loop's exception
    handler, with a traceback, and retries; at the descriptor limit that is
    a traceback per retry for as long as the limit lasts (and a retry per
    failed accept, so a traceback per pending retry when the listener
    closes).  uvloop reports through the same handler, if at all (libuv
    sheds connections at the limit itself).  Other reports go to the handler
    there was.
    """
    previous = loop.get_exception_handler()
    state = {"last": -interval, "held": 0}

    def handler(loop, context):
        exc = context.get("exception")
        retry = getattr(context.get("handle"), "_callback", None)
        if getattr(retry, "__name__", "") == "_start_serving":
            # asyncio schedules a retry per failed accept, up to the backlog
            # (128) per round; those still pending when the listener closes
            # fail on its closed descriptor.
            state["held"] += 1
            return None
        if not (isinstance(exc, OSError) and exc.errno in ACCEPT_EXHAUSTED):
            if previous is not None:
                return previous(loop, context)
            return loop.default_exception_handler(context)
        now = time.monotonic()
        if now - state["last"] < interval:
            state["held"] += 1
            return None
        logger.error("cannot accept connections: %s (raise the file-descriptor limit, "
                     "ulimit -n); %d similar reports in the last %.0f s", exc.strerror,
                     state["held"], interval)
        state["last"], state["held"] = now, 0
        return None

    loop.set_exception_handler(handler)
