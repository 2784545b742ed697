"""Configuration: read from the environment once, validated, frozen.

This is the only module that looks at ``os.environ``.  Entry points call
:func:`load_settings`, and everything else is handed the resulting
:class:`Settings` object; tests build ``Settings(...)`` directly.

A bad value raises :class:`SettingsError`, whose message is one line that
names the variable and says what it accepts.  Entry points print that line
and exit with status 2 instead of showing a traceback.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from .redis_url import RedisTarget, masked, parse_redis_url

MODES = ("socketio", "pubsub")
DEFAULT_WEB_DIR = Path(__file__).resolve().parent.parent / "web"
HOST_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


class SettingsError(ValueError):
    """A setting has a value the service cannot run with."""


@dataclasses.dataclass(frozen=True)
class Settings:
    # Where this replica listens (used by ``python -m chat``; gunicorn binds
    # from its own configuration).
    host: str = "127.0.0.1"
    port: int = 8000
    # Backplane: no URL means a single node with the in-memory manager.
    redis_url: str | None = None
    redis_mode: str = "socketio"
    redis_channel: str = "chat:messages"
    # Redis replicas an append must reach before the sender's ack says ok
    # (WAIT); None: 1 when the URL names a topology with replicas (Sentinel,
    # Cluster), 0 for a single Redis.  See ``wait_replicas``.
    redis_wait_replicas: int | None = None
    server_id: str = dataclasses.field(default_factory=socket.gethostname)
    # Origins allowed to open a Socket.IO connection.  Empty means
    # same-origin only; ("*",) allows any origin.
    cors_origins: tuple[str, ...] = ()
    max_message_length: int = 2000
    # Largest Engine.IO frame a client may send, in bytes.  A chat message of
    # max_message_length characters fits with room to spare; the library's
    # default of 1 MB would let one client make a replica parse megabytes.
    max_frame_bytes: int = 32_768
    # Token bucket per connection: sustained messages per second, and burst.
    message_rate: float = 10.0
    message_burst: int = 20
    # History: how many messages each room's Redis Stream keeps (the window
    # a reconnecting client can resume within), and how many a newcomer gets.
    history_length: int = 1000
    history_on_join: int = 50
    # The most bytes of messages one answer carries (a welcome's history, a
    # ``history`` answer): a room of long messages cannot make one request
    # cost megabytes.  The rest is asked for again (README, "history").
    history_max_bytes: int = 262_144
    # Outgoing bytes a connection may have waiting (its send queue plus its
    # TCP write buffer): a client that stops reading is disconnected past
    # this instead of holding the replica's memory.
    max_queued_bytes: int = 1_048_576
    # Presence: a replica refreshes its users' entries every third of this;
    # the users of a replica that stops refreshing vanish after at most this
    # long (plus one refresh period).
    presence_ttl: float = 15.0
    # Socket.IO's connection state recovery (chat/recovery.py): how long a
    # stock client that lost its connection may come back to its session,
    # on any replica, with what it missed.  0 turns it off.
    recovery_window: float = 120.0
    # Redis connections each of a replica's two Redis clients (storage, and
    # the backplane) may hold; more concurrent operations wait for one.
    redis_max_connections: int = 32
    # Rooms (chat/rooms.py): distinct rooms one client address may enter per
    # minute, and rooms with members on one replica.
    rooms_per_minute: int = 60
    max_rooms: int = 10_000
    # Seconds between the Sequencer's history catch-ups (chat/delivery.py);
    # 0 turns the catch-up off, so tests can measure the live backplane alone.
    catch_up_every: float = 1.0
    ping_interval: float = 25.0
    ping_timeout: float = 20.0
    log_level: str = "INFO"
    # "text": one readable line per event; "json": one JSON object per line,
    # for log pipelines (chat/logs.py).
    log_format: str = "text"
    web_dir: Path = DEFAULT_WEB_DIR
    # Signed identities (chat/auth.py).  One of the two, or neither (open
    # mode: anyone connects under any name not held by someone else).
    auth_jwt_secret: str | None = None  # HS256 secret
    auth_jwt_public_key: str | None = None  # PEM text (the file AUTH_JWT_PUBLIC_KEY names)
    # The HTTP API (chat/api.py): bearer keys, and each key's requests per
    # second and burst, on each replica.
    api_keys: tuple[str, ...] = ()
    api_rate: float = 20.0
    api_burst: int = 40
    # The Socket.IO Admin UI (chat/admin.py): off while unset.
    admin_password: str | None = None

    @property
    def open_mode(self) -> bool:
        """No signed identities: connections name themselves."""
        return not (self.auth_jwt_secret or self.auth_jwt_public_key)

    @property
    def mode(self) -> str:
        """The backplane actually in use: memory, socketio or pubsub."""
        return self.redis_mode if self.redis_url else "memory"

    @property
    def redis_target(self) -> RedisTarget | None:
        """What ``redis_url`` names (chat/redis_url.py), or None without Redis."""
        return parse_redis_url(self.redis_url) if self.redis_url else None

    @property
    def wait_replicas(self) -> int:
        """Redis replicas each stored message must reach before its ack."""
        if self.redis_wait_replicas is not None:
            return self.redis_wait_replicas
        target = self.redis_target
        return 1 if target is not None and target.has_replicas else 0


def _text(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name, "").strip()
    return value or default


def _number(env: Mapping[str, str], name: str, default, kind=int, minimum=0):
    raw = env.get(name, "").strip()
    if not raw:
        return default
    what = "a whole number" if kind is int else "a number"
    problem = SettingsError(f"{name}={raw!r} is not valid: expected {what} >= {minimum}")
    try:
        value = kind(raw)
    except ValueError:
        raise problem from None
    if not value >= minimum:  # also refuses NaN
        raise problem
    return value


def _redis_url(env: Mapping[str, str]) -> str | None:
    raw = env.get("REDIS_URL", "").strip()
    if not raw:
        return None
    try:
        parse_redis_url(raw)
    except ValueError as exc:
        raise SettingsError(f"REDIS_URL={masked(raw)!r} is not valid: {exc}") from None
    return raw


def _channel(env: Mapping[str, str]) -> str:
    raw = _text(env, "REDIS_CHANNEL", Settings.redis_channel)
    if "{" in raw or "}" in raw:
        # Every room key is tagged {room} (redis_keys.py); a brace in the
        # prefix would move the tag and put rooms' keys in other slots.
        raise SettingsError(f"REDIS_CHANNEL={raw!r} is not valid: {{ and }} are reserved "
                            "for the rooms' Redis Cluster hash tags")
    return raw


def _wait_replicas(env: Mapping[str, str]) -> int | None:
    if not env.get("REDIS_WAIT_REPLICAS", "").strip():
        return None
    return _number(env, "REDIS_WAIT_REPLICAS", 0)


def _topology_fits_mode(settings: Settings) -> None:
    """A Cluster URL needs a backplane that can run on a Cluster."""
    target = settings.redis_target
    if target is None or target.topology != "cluster":
        return
    shown = masked(settings.redis_url)
    if settings.redis_mode == "socketio":
        raise SettingsError(f"REDIS_URL={shown!r} is a Redis Cluster, which python-socketio's "
                            "manager (REDIS_MODE=socketio) cannot use: set REDIS_MODE=pubsub")


def _host(env: Mapping[str, str]) -> str:
    raw = env.get("HOST", "").strip() or Settings.host
    try:
        ipaddress.ip_address(raw)
        return raw
    except ValueError:
        pass
    labels = raw.rstrip(".").split(".")
    if (len(raw) > 253 or not all(HOST_LABEL.fullmatch(label) for label in labels)
            or labels[-1].isdigit()):  # 999.1.1.1 is no address and no name
        raise SettingsError(f"HOST={raw!r} is not valid: expected an IP address such as "
                            "127.0.0.1 or 0.0.0.0, or a host name")
    return raw


def _web_dir(env: Mapping[str, str]) -> Path:
    raw = env.get("WEB_DIR", "").strip()
    if not raw:
        return DEFAULT_WEB_DIR
    path = Path(raw)
    if not (path / "index.html").is_file():
        raise SettingsError(f"WEB_DIR={raw!r} is not valid: expected a folder holding the "
                            "page (index.html)")
    return path


def _mode(env: Mapping[str, str]) -> str:
    raw = env.get("REDIS_MODE", "").strip().lower() or Settings.redis_mode
    if raw not in MODES:
        raise SettingsError(
            f"REDIS_MODE={env['REDIS_MODE']!r} is not valid: expected one of "
            + ", ".join(MODES)
        )
    return raw


def _origins(env: Mapping[str, str]) -> tuple[str, ...]:
    raw = env.get("CORS_ORIGINS", "").strip()
    if not raw:
        return ()
    origins = tuple(o.strip().rstrip("/") for o in raw.split(",") if o.strip())
    for origin in origins:
        if origin == "*":
            continue
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path:
            raise SettingsError(
                f"CORS_ORIGINS={raw!r} is not valid: expected '*' or a comma-separated "
                "list of origins such as https://chat.example.com"
            )
    return origins


def _log_level(env: Mapping[str, str]) -> str:
    raw = env.get("LOG_LEVEL", "").strip().upper() or Settings.log_level
    levels = ("DEBUG", "INFO", "WARNING", "ERROR")
    if raw not in levels:
        raise SettingsError(
            f"LOG_LEVEL={env['LOG_LEVEL']!r} is not valid: expected one of "
            + ", ".join(levels)
        )
    return raw


def _server_id(env: Mapping[str, str]) -> str:
    raw = env.get("SERVER_ID", "").strip()
    if not raw:
        return socket.gethostname()
    if len(raw) > 64 or not raw.isprintable():
        raise SettingsError(
            f"SERVER_ID={raw!r} is not valid: expected 1 to 64 printable characters"
        )
    return raw


MIN_SECRET_BYTES = 32  # RFC 7518 3.2: an HS256 key at least as long as the hash
MIN_API_KEY = 16
MIN_ADMIN_PASSWORD = 12


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = env.get(name, "").strip().lower() or default
    if raw not in choices:
        raise SettingsError(f"{name}={env[name]!r} is not valid: expected one of "
                            + ", ".join(choices))
    return raw


def _secret(env: Mapping[str, str], name: str, minimum: int) -> str | None:
    raw = env.get(name, "")
    if not raw:
        return None
    if len(raw.encode()) < minimum or raw != raw.strip():
        # The value itself is not printed: it is a secret.
        raise SettingsError(f"{name} is not valid: expected at least {minimum} bytes "
                            "without surrounding spaces")
    return raw


def _public_key(env: Mapping[str, str]) -> str | None:
    raw = env.get("AUTH_JWT_PUBLIC_KEY", "").strip()
    if not raw:
        return None
    accepted = "a PEM file holding an RSA (RS256) or P-256 EC (ES256) public key"
    try:
        pem = Path(raw).read_text()
    except (OSError, UnicodeDecodeError):
        raise SettingsError(f"AUTH_JWT_PUBLIC_KEY={raw!r} is not valid: expected {accepted} "
                            "(it cannot be read)") from None
    from .auth import BadKey, key_algorithm  # cryptography only when a key is set

    try:
        key_algorithm(pem)
    except BadKey as exc:
        raise SettingsError(f"AUTH_JWT_PUBLIC_KEY={raw!r} is not valid: expected {accepted} "
                            f"({exc})") from None
    return pem


def _api_keys(env: Mapping[str, str]) -> tuple[str, ...]:
    raw = env.get("API_KEYS", "")
    keys = tuple(k.strip() for k in raw.split(",") if k.strip())
    if any(len(k) < MIN_API_KEY or not k.isascii() or not k.isprintable() or " " in k
           for k in keys):
        raise SettingsError(f"API_KEYS is not valid: expected comma-separated keys of at least "
                            f"{MIN_API_KEY} printable ASCII characters without spaces")
    return keys


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build :class:`Settings` from ``env`` (default: ``os.environ``)."""
    env = os.environ if env is None else env
    d = Settings(server_id="")  # the defaults, written once: in the dataclass
    settings = Settings(
        host=_host(env),
        port=_number(env, "PORT", d.port, minimum=1),
        redis_url=_redis_url(env),
        redis_mode=_mode(env),
        redis_channel=_channel(env),
        redis_wait_replicas=_wait_replicas(env),
        server_id=_server_id(env),
        cors_origins=_origins(env),
        max_message_length=_number(env, "MAX_MESSAGE_LENGTH", d.max_message_length, minimum=1),
        max_frame_bytes=_number(env, "MAX_FRAME_BYTES", d.max_frame_bytes, minimum=1024),
        message_rate=_number(env, "MESSAGE_RATE", d.message_rate, kind=float, minimum=0.1),
        message_burst=_number(env, "MESSAGE_BURST", d.message_burst, minimum=1),
        history_length=_number(env, "HISTORY_LENGTH", d.history_length, minimum=1),
        history_on_join=_number(env, "HISTORY_ON_JOIN", d.history_on_join, minimum=0),
        history_max_bytes=_number(env, "HISTORY_MAX_BYTES", d.history_max_bytes,
                                  minimum=1024),
        max_queued_bytes=_number(env, "MAX_QUEUED_BYTES", d.max_queued_bytes, minimum=1024),
        presence_ttl=_number(env, "PRESENCE_TTL", d.presence_ttl, kind=float, minimum=1),
        recovery_window=_number(env, "RECOVERY_WINDOW", d.recovery_window, kind=float),
        redis_max_connections=_number(env, "REDIS_MAX_CONNECTIONS", d.redis_max_connections,
                                      minimum=2),
        rooms_per_minute=_number(env, "ROOMS_PER_MINUTE", d.rooms_per_minute, minimum=1),
        max_rooms=_number(env, "MAX_ROOMS", d.max_rooms, minimum=1),
        catch_up_every=_number(env, "CATCH_UP_EVERY", d.catch_up_every, kind=float),
        ping_interval=_number(env, "PING_INTERVAL", d.ping_interval, kind=float, minimum=1),
        ping_timeout=_number(env, "PING_TIMEOUT", d.ping_timeout, kind=float, minimum=1),
        log_level=_log_level(env),
        log_format=_choice(env, "LOG_FORMAT", d.log_format, ("text", "json")),
        web_dir=_web_dir(env),
        auth_jwt_secret=_secret(env, "AUTH_JWT_SECRET", MIN_SECRET_BYTES),
        auth_jwt_public_key=_public_key(env),
        api_keys=_api_keys(env),
        api_rate=_number(env, "API_RATE", d.api_rate, kind=float, minimum=0.1),
        api_burst=_number(env, "API_BURST", d.api_burst, minimum=1),
        admin_password=_secret(env, "ADMIN_PASSWORD", MIN_ADMIN_PASSWORD),
    )
    _topology_fits_mode(settings)
    if settings.auth_jwt_secret and settings.auth_jwt_public_key:
        raise SettingsError("AUTH_JWT_SECRET and AUTH_JWT_PUBLIC_KEY are both set: expected "
                            "one of them (HS256 with a shared secret, or RS256/ES256 with a "
                            "public key)")
    if settings.port > 65535:
        raise SettingsError(f"PORT={settings.port} is not valid: expected 1 to 65535")
    if settings.max_message_length * 4 + 256 > settings.max_frame_bytes:
        raise SettingsError(
            f"MAX_FRAME_BYTES={settings.max_frame_bytes} is not valid: it must hold a "
            f"message of MAX_MESSAGE_LENGTH={settings.max_message_length} characters "
            f"(at least {settings.max_message_length * 4 + 256})"
        )
    if settings.history_max_bytes < settings.max_frame_bytes:
        raise SettingsError(
            f"HISTORY_MAX_BYTES={settings.history_max_bytes} is not valid: it must hold "
            f"one message, at least MAX_FRAME_BYTES={settings.max_frame_bytes}"
        )
    if settings.max_queued_bytes < 2 * settings.history_max_bytes:
        raise SettingsError(
            f"MAX_QUEUED_BYTES={settings.max_queued_bytes} is not valid: it must hold a "
            f"history answer and more, at least 2 x HISTORY_MAX_BYTES "
            f"({2 * settings.history_max_bytes})"
        )
    if settings.history_on_join > settings.history_length:
        raise SettingsError(
            f"HISTORY_ON_JOIN={settings.history_on_join} is not valid: it must not exceed "
            f"HISTORY_LENGTH={settings.history_length}"
        )
    return settings
