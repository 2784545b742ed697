"""The application factory: where one replica is assembled.

``create_app`` reads like a table of contents: settings, metrics, the
backplane manager, the Socket.IO server, the room history and presence, the
chat namespace, the HTTP API, HTTP routes, and the lifetime of the
background work.
gunicorn's aiohttp worker (through :func:`gunicorn_app`), ``python -m chat``
and the tests all build the app here and nowhere else.
"""

from __future__ import annotations

import asyncio
import logging
import secrets

from aiohttp import web

from . import jsonio
from .admin import setup_admin
from .api import Api, setup_api
from .api_answers import MemoryAnswers, RedisAnswers
from .appkeys import (
    CONNECTIONS,
    LOGGER,
    MANAGER,
    METRICS,
    NAMESPACE,
    REGISTRY,
    ROSTER,
    SETTINGS,
    SIO,
)
from .backplane import create_manager
from .events import ChatNamespace
from .history import MemoryHistory, RedisHistory
from .logs import quiet_accept_errors, setup_logging
from .metrics import Metrics
from .presence import MemoryStore, Presence, RedisStore
from .recovery import Recovery
from .redis_clients import store_client
from .redis_keys import RedisKeys
from .replicas import Registry
from .routes import setup_routes
from .server import ChatServer
from .session_store import MemorySessions, RedisSessions
from .settings import Settings, load_settings

STOP_STEP = 2.0  # seconds each step of a replica's shutdown may take


def create_app(settings: Settings | None = None) -> web.Application:
    settings = settings or load_settings()
    logger = logging.getLogger("chat")
    metrics = Metrics(settings.server_id, settings.mode)
    manager = create_manager(settings, metrics, logger)
    sio = ChatServer(
        async_mode="aiohttp",
        json=jsonio,
        client_manager=manager,
        cors_allowed_origins=_cors(settings),
        max_http_buffer_size=settings.max_frame_bytes,
        max_queued_bytes=settings.max_queued_bytes,
        ping_interval=settings.ping_interval,
        ping_timeout=settings.ping_timeout,
        # Run each client's events in the order they arrive, one at a time,
        # so one sender's messages are relayed in the order they were sent.
        async_handlers=False,
        # Our logger for the server's own warnings (malformed packets); the
        # library's per-packet INFO lines are muted in chat.logs.
        logger=logger.getChild("socketio"),
        engineio_logger=logger.getChild("engineio"),
    )
    store, history, presence_store = create_stores(
        settings, relay_host=manager.host_id if settings.mode == "pubsub" else None)
    sequencer = manager.sequence(history, logger, settings.catch_up_every)
    presence = Presence(presence_store, ttl=settings.presence_ttl, logger=logger,
                        emit=lambda room, event: sio.emit("presence", event, room=room))
    recovery = create_recovery(settings, store, history, presence, logger)
    sio.recovery = recovery
    manager.offsets = recovery.pid_of
    namespace = ChatNamespace(settings, metrics, logger, history=history,
                              sequencer=sequencer, presence=presence, recovery=recovery)
    sio.register_namespace(namespace)
    roster = setup_admin(sio, namespace, settings, redis=store, logger=logger,
                         key=RedisKeys(settings.redis_channel).admin_watching)

    async def status() -> dict:
        ready, reason = await manager.ready()
        return {"mode": settings.mode, "clients": len(namespace.clients), "ready": ready,
                "reason": reason}

    registry = Registry(store, key=RedisKeys(settings.redis_channel).replicas,
                        server_id=settings.server_id, ttl=settings.presence_ttl,
                        status=status, logger=logger)

    answers = (RedisAnswers(store, RedisKeys(settings.redis_channel)) if store is not None
               else MemoryAnswers())
    api = Api(settings, namespace, answers, logger.getChild("api"))

    # No middleware: see chat.api.api_errors and chat.websocket.create_route.
    app = web.Application()
    app[SETTINGS] = settings
    app[METRICS] = metrics
    app[MANAGER] = manager
    app[SIO] = sio
    app[NAMESPACE] = namespace
    app[REGISTRY] = registry
    app[LOGGER] = logger
    app[ROSTER] = roster
    sio.attach(app)
    setup_routes(app)
    setup_api(app, api)
    app.on_startup.append(lambda app: _quiet_accepts(logger))
    app.cleanup_ctx.append(backplane_lifetime)
    app.on_shutdown.append(drain)
    return app


async def _quiet_accepts(logger: logging.Logger) -> None:
    """One line per interval, not a traceback per retry, when the loop that
    runs the app (asyncio's or uvloop's) cannot accept for want of descriptors."""
    quiet_accept_errors(asyncio.get_running_loop(), logger)


async def drain(app: web.Application) -> None:
    """On SIGTERM: drop every client's connection so it reconnects elsewhere.

    By now the listening socket is closed, so the reconnection lands, through
    NGINX, on another replica.  Closing the TCP connection is the one signal
    every Socket.IO client takes as "reconnect": a Socket.IO or Engine.IO
    close packet would tell the Python client, at least, to stop for good.
    """
    connections = [t for t in app[CONNECTIONS] if not t.is_closing()]
    if connections:
        app[LOGGER].info("draining: closing %d client connections", len(connections))
    for transport in connections:
        transport.close()
    await asyncio.sleep(0)  # let the handlers see their connections go


async def backplane_lifetime(app: web.Application):
    """Start the backplane listener with the app, stop it with the app.

    python-socketio would otherwise start it on the first client connection,
    leaving an idle replica unsubscribed and ``/readyz`` unable to tell.
    """
    sio, settings, logger = app[SIO], app[SETTINGS], app[LOGGER]
    sio.manager_initialized = True
    sio.manager.initialize()
    namespace = app[NAMESPACE]
    loops = [asyncio.ensure_future(namespace.sequencer.run()),
             asyncio.ensure_future(namespace.presence.run()),
             asyncio.ensure_future(namespace.recovery.run()),
             asyncio.ensure_future(app[REGISTRY].run())]
    roster = app[ROSTER]
    if roster is not None:
        loops.append(asyncio.ensure_future(roster.run()))
    logger.info("replica %s up, backplane %s, identities: %s", settings.server_id,
                settings.mode, namespace.identities.describe())
    yield
    for task in loops:
        task.cancel()
    await asyncio.gather(*loops, return_exceptions=True)
    # Each step bounded: one that hangs (a Redis that stalls as we stop)
    # must not hold the worker until gunicorn kills it, and the log says
    # which one it was.
    steps = (("presence", namespace.presence.close()),  # the drained clients' departures
             ("replica registry", app[REGISTRY].close()),
             ("recovery", namespace.recovery.close()),
             ("sequencer", namespace.sequencer.close()),
             ("admin UI", roster.close() if roster else asyncio.sleep(0)),
             ("Engine.IO", sio.shutdown()),
             ("backplane", app[MANAGER].close()),
             ("history", namespace.history.close()))
    for what, step in steps:
        try:
            async with asyncio.timeout(STOP_STEP):
                await step
        except TimeoutError:
            logger.warning("stopping: %s took more than %g s; going on", what, STOP_STEP)
    logger.info("replica %s stopped", settings.server_id)


def create_stores(settings: Settings, relay_host: str | None = None):
    """The store's Redis client (None without Redis), the room history and
    the presence store: in Redis when there is one (one client, and one pool
    of at most REDIS_MAX_CONNECTIONS, for both and the replica registry),
    else in this process.  ``relay_host``: the pubsub manager's host id, when
    the history's append script is to publish each message itself."""
    if settings.mode == "memory":
        return None, MemoryHistory(settings.history_length), MemoryStore()
    client = store_client(settings)
    keys = RedisKeys(settings.redis_channel)
    cluster = settings.redis_target is not None and settings.redis_target.topology == "cluster"
    history = RedisHistory(client, keys=keys, length=settings.history_length,
                           relay_host=relay_host, wait_replicas=settings.wait_replicas,
                           publish="SPUBLISH" if cluster else "PUBLISH")
    return (client, history,
            RedisStore(client, keys=keys, ttl=settings.presence_ttl))


def create_recovery(settings: Settings, store, history, presence, logger) -> Recovery:
    """Session records for Socket.IO's connection state recovery: in Redis
    beside the rest when there is one, else in this process."""
    instance = f"{settings.server_id}:{secrets.token_hex(4)}"
    sessions = (MemorySessions(instance) if store is None
                else RedisSessions(store, RedisKeys(settings.redis_channel), instance))
    return Recovery(sessions, window=settings.recovery_window, history=history,
                    presence=presence, logger=logger, instance=instance,
                    limit=settings.history_length)


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
