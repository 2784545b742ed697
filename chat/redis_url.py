"""What a ``REDIS_URL`` names: one Redis, a Sentinel-watched master, or a Cluster.

Pure parsing, no environment and no connection: ``settings.py`` turns a
:class:`ValueError` from here into its one-line refusal naming ``REDIS_URL``,
and ``redis_clients.py`` builds the clients from the :class:`RedisTarget`.
The accepted forms::

    redis://[[user]:password@]host[:port][/db]     one Redis (rediss:// for TLS)
    unix:///path/to/redis.sock                     one Redis, through a socket
    redis+sentinel://[[user]:password@]host:port[,host:port...]/db/service_name
    redis+cluster://[[user]:password@]host:port[,host:port...]   (rediss+cluster:// for TLS)

The Sentinel form is python-socketio's own (``parse_redis_sentinel_url`` in
its ``redis_manager.py``), database *before* service name, so socketio mode
hands the URL to the library unchanged; the credentials are the master's and
its replicas', the hosts are the sentinels.  A Cluster URL lists seed nodes:
any reachable one tells the client the rest, and a Cluster has database 0 only.
"""

from __future__ import annotations

import dataclasses
from urllib.parse import unquote, urlsplit

REDIS_DATABASES = 16  # Redis's default number of databases (0-15)
SINGLE = ("redis", "rediss", "unix")
SENTINEL = ("redis+sentinel",)
CLUSTER = ("redis+cluster", "rediss+cluster")
SENTINEL_FORM = "/db/service_name (python-socketio's order, e.g. /0/mymaster)"


@dataclasses.dataclass(frozen=True)
class RedisTarget:
    topology: str  # "single", "sentinel" or "cluster"
    # The sentinels, or the cluster's seed nodes; () for a single Redis (its
    # URL is handed to redis-py as it is).
    nodes: tuple[tuple[str, int], ...] = ()
    service: str | None = None  # the master's name the sentinels know
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False

    @property
    def has_replicas(self) -> bool:
        """A topology built with replicas (what REDIS_WAIT_REPLICAS defaults on)."""
        return self.topology != "single"


def masked(raw: str) -> str:
    """``raw`` with its password replaced, for error messages and logs."""
    scheme, sep, rest = raw.partition("://")
    userinfo, at, hosts = rest.partition("@")
    if not sep or not at or ":" not in userinfo:
        return raw
    return f"{scheme}://{userinfo.partition(':')[0]}:***@{hosts}"


def parse_redis_url(raw: str) -> RedisTarget:
    """The target ``raw`` names; ValueError says in a few words what is wrong."""
    scheme = raw.partition("://")[0].lower() if "://" in raw else ""
    if scheme in SENTINEL or scheme in CLUSTER:
        return _multi_host(raw, scheme)
    if scheme not in SINGLE:
        raise ValueError("expected a redis://, rediss://, unix://, redis+sentinel://, "
                         "redis+cluster:// or rediss+cluster:// URL")
    try:
        parts = urlsplit(raw)
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError:
        raise ValueError(f"expected a {scheme}:// URL such as {scheme}://host:6379/0") from None
    if scheme == "unix":
        if not parts.path:
            raise ValueError("a unix:// URL needs a socket path")
        return RedisTarget("single")
    if not parts.hostname:
        raise ValueError("it names no host")
    return RedisTarget("single", db=_db(parts.path.strip("/"), "after the last /"),
                       tls=scheme == "rediss")


def _multi_host(raw: str, scheme: str) -> RedisTarget:
    rest = raw.partition("://")[2]
    netloc, slash, path = rest.partition("/")
    if "?" in rest or "#" in rest:
        raise ValueError("options (?...) are not accepted in this URL")
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username, password = unquote(user) or None, (unquote(secret) if colon else None)
    nodes = tuple(_node(item) for item in hosts.split(","))
    if scheme in SENTINEL:
        pieces = path.split("/") if slash else []
        if len(pieces) != 2 or not pieces[1]:
            raise ValueError(f"a redis+sentinel:// URL ends in {SENTINEL_FORM}")
        db = _db(pieces[0], f"in {SENTINEL_FORM}")
        return RedisTarget("sentinel", nodes, pieces[1], db, username, password)
    if path.strip("/") not in ("", "0"):
        raise ValueError("a Redis Cluster has database 0 only (end the URL after the last "
                         "host:port)")
    return RedisTarget("cluster", nodes, None, 0, username, password,
                       tls=scheme == "rediss+cluster")


def _node(item: str) -> tuple[str, int]:
    host, colon, port = item.strip().rpartition(":")
    if not colon or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{item.strip() or 'an empty host'!r} is not host:port "
                         "(list hosts as host:port,host:port)")
    return host, int(port)


def _db(text: str, where: str) -> int:
    if not text:
        return 0
    if not (text.isdigit() and int(text) < REDIS_DATABASES):
        raise ValueError(f"the database {where} must be a number from 0 to "
                         f"{REDIS_DATABASES - 1}")
    return int(text)
