# gunicorn settings for one chat replica (the bind address comes from the
# command line: `gunicorn -c deploy/gunicorn.conf.py --bind HOST:PORT`).

# aiohttp's worker runs the app from chat.app:gunicorn_app, an async factory,
# on uvloop's event loop (faster than asyncio's own, docs/benchmarks.md).
wsgi_app = "chat.app:gunicorn_app"
worker_class = "aiohttp.GunicornUVLoopWebWorker"

# One worker per replica: a Socket.IO session lives in one process's memory,
# and the cluster scales by adding replicas, each behind NGINX's sticky hash.
workers = 1

# On SIGTERM the worker stops accepting, tells its clients to reconnect
# elsewhere and has this long to finish, after which the master kills it.
# Its stop (chat/app.py, backplane_lifetime) runs 8 steps one after the
# other, each bounded by STOP_STEP (2 s): 16 s when Redis stalls on every
# one, plus the requests still running after the drain (aiohttp waits for
# them first, up to 95% of this).  20 s lets a stalled stop finish its
# steps; tests/test_kubernetes_code.py reads the steps' bounds from the app
# and holds this to their sum, and Kubernetes' grace period to this.
graceful_timeout = 20
timeout = 30
keepalive = 5

accesslog = None
errorlog = "-"
loglevel = "info"

# gunicorn >= 24 opens a control socket at a fixed path in $HOME; several
# replicas on one machine would fight over it, and nothing here uses it.
control_socket_disable = True


def on_starting(server):
    """Check the settings in the master, before any worker boots.

    A bad value then stops gunicorn with one line naming it, instead of
    every worker dying with a traceback in a restart loop.
    """
    import sys

    from chat.settings import SettingsError, load_settings

    try:
        load_settings()
    except SettingsError as exc:
        print(f"chat: {exc}", file=sys.stderr)
        sys.exit(2)


def _log_config() -> dict:
    """LOG_FORMAT=json: gunicorn's own lines as JSON too, from its first one.

    A bad setting is left to on_starting, which names it."""
    from chat.settings import SettingsError, load_settings

    try:
        settings = load_settings()
    except SettingsError:
        return {}
    if settings.log_format != "json":
        return {}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "chat.logs.JsonFormatter",
                                "server_id": settings.server_id}},
        # gunicorn merges this over its defaults key by key: "console" and
        # "root" replace its own.
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "json",
                                 "stream": "ext://sys.stderr"}},
        "root": {"level": "INFO", "handlers": ["console"]},
        "loggers": {"gunicorn.error": {"handlers": ["console"], "level": "INFO",
                                       "propagate": False}},
    }


logconfig_dict = _log_config()
