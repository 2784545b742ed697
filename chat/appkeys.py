"""Typed keys for what the application factory stores on the aiohttp app."""

from __future__ import annotations

import logging

from aiohttp import web

from .backplane import Observed
from .events import ChatNamespace
from .metrics import Metrics
from .replicas import Registry
from .server import ChatServer
from .settings import Settings
from .websocket import CONNECTIONS  # noqa: F401  (set up by its create_route)

SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", Metrics)
MANAGER = web.AppKey("manager", Observed)
SIO = web.AppKey("sio", ChatServer)
NAMESPACE = web.AppKey("namespace", ChatNamespace)
REGISTRY = web.AppKey("registry", Registry)
LOGGER = web.AppKey("logger", logging.Logger)
ROSTER = web.AppKey("roster", object)  # admin.Roster, or None without ADMIN_PASSWORD
