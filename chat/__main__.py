"""``python -m chat``: one replica in the foreground.

In-memory by default; set ``REDIS_URL`` to join a Redis backplane.  The page
in ``web/`` is served at ``/``.
"""

from __future__ import annotations

import argparse
import sys

from aiohttp import web

from .app import create_app
from .logs import setup_logging
from .settings import SettingsError, load_settings


def main(argv=None) -> int:
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"chat: {exc}", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog="python -m chat", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=settings.host, help="address to bind (HOST)")
    parser.add_argument("--port", type=int, default=settings.port, help="port (PORT)")
    args = parser.parse_args(argv)
    logger = setup_logging(settings)
    app = create_app(settings)
    logger.info("serving on http://%s:%s/", args.host, args.port)
    web.run_app(app, host=args.host, port=args.port, print=None,
                shutdown_timeout=5.0, handle_signals=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
