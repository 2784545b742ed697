"""The application factory: where one replica is assembled.

``create_app`` reads like a table of contents: settings, metrics, the
backplane manager, the Socket.IO server with the chat namespace, HTTP routes,
and the backplane's lifetime.  gunicorn's aiohttp worker (through
:func:`gunicorn_app`), ``python -m chat`` and the tests all build the app
here and nowhere else.
"""

from __future__ import annotations

import logging

import socketio
from aiohttp import web

from .backplane import create_manager
from .events import ChatNamespace
from .keys import LOGGER, MANAGER, METRICS, NAMESPACE, SETTINGS, SIO
from .logs import setup_logging
from .metrics import Metrics
from .routes import setup_routes
from .settings import Settings, load_settings


def create_app(settings: Settings | None = None) -> web.Application:
    settings = settings or load_settings()
    logger = logging.getLogger("chat")
    metrics = Metrics(settings.server_id, settings.mode)
    manager = create_manager(settings, metrics, logger)
    sio = socketio.AsyncServer(
        async_mode="aiohttp",
        client_manager=manager,
        cors_allowed_origins=_cors(settings),
        max_http_buffer_size=settings.max_frame_bytes,
        ping_interval=settings.ping_interval,
        ping_timeout=settings.ping_timeout,
        # Run each client's events in the order they arrive, one at a time,
        # so one sender's messages are relayed in the order they were sent.
        async_handlers=False,
        logger=logger.getChild("socketio") if settings.log_level == "DEBUG" else False,
    )
    namespace = ChatNamespace(settings, metrics, logger)
    sio.register_namespace(namespace)

    app = web.Application()
    app[SETTINGS] = settings
    app[METRICS] = metrics
    app[MANAGER] = manager
    app[SIO] = sio
    app[NAMESPACE] = namespace
    app[LOGGER] = logger
    sio.attach(app)
    setup_routes(app)
    app.cleanup_ctx.append(backplane_lifetime)
    return app


async def backplane_lifetime(app: web.Application):
    """Start the backplane listener with the app, stop it with the app.

    python-socketio would otherwise start it on the first client connection,
    leaving an idle replica unsubscribed and ``/readyz`` unable to tell.
    """
    sio, settings, logger = app[SIO], app[SETTINGS], app[LOGGER]
    sio.manager_initialized = True
    sio.manager.initialize()
    logger.info("replica %s up, backplane %s", settings.server_id, settings.mode)
    yield
    await app[MANAGER].close()


def _cors(settings: Settings):
    if not settings.cors_origins:
        return None  # same origin only
    if "*" in settings.cors_origins:
        return "*"
    return list(settings.cors_origins)


async def gunicorn_app() -> web.Application:
    """Entry point for gunicorn's aiohttp worker (``chat.app:gunicorn_app``)."""
    settings = load_settings()
    setup_logging(settings)
    return create_app(settings)
