"""``python -m chat``: one replica in the foreground.

In-memory by default; set ``REDIS_URL`` to join a Redis backplane.  The page
in ``web/`` is served at ``/``.

The listening socket is opened here, before the app starts, so that an
address that cannot be had (a busy port, a host that is not this machine's)
stops start-up with one line, like a bad setting does, instead of a
traceback after "serving on".
"""

from __future__ import annotations

import argparse
import os
import socket
import sys

from aiohttp import web

from .app import create_app
from .logs import setup_logging
from .settings import SettingsError, load_settings


def port_number(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 1 to 65535, not {value!r}")
    return port


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` and listening; OSError says why not."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(1024)
    except OSError:
        sock.close()
        raise
    return sock


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m chat", description="Run one chat replica in the foreground.",
        epilog="Every other setting comes from the environment (README: Configuration).")
    parser.add_argument("--host", help="address to bind (default: HOST, else 127.0.0.1)")
    parser.add_argument("--port", type=port_number,
                        help="port (default: PORT, else 8000)")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # --help works whatever the environment holds
    try:
        env = dict(os.environ)
        if args.host is not None:
            env["HOST"] = args.host
        if args.port is not None:
            env["PORT"] = str(args.port)
        settings = load_settings(env)
    except SettingsError as exc:
        print(f"chat: {exc}", file=sys.stderr)
        return 2
    try:
        sock = listening_socket(settings.host, settings.port)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        print(f"chat: cannot listen on {settings.host}:{settings.port}: {reason}",
              file=sys.stderr)
        return 2
    logger = setup_logging(settings)
    app = create_app(settings)
    logger.info("serving on http://%s:%s/", settings.host, settings.port)
    web.run_app(app, sock=sock, print=None, shutdown_timeout=5.0, handle_signals=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
