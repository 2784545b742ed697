"""Fixtures that start real services: redis-server, replicas, NGINX, clients.

Every process is started through ``chat.tools.cluster`` (the code ``make up`` runs)
and stopped by PID in the fixture's teardown, whatever the test did.
Nothing here touches the Redis on port 6379.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import time

import aiohttp
import pytest
import socketio
from wire import Reader

from chat.tools import redis_topology
from chat.tools.cluster import ROOT, LocalCluster, RedisProcess, free_port, http_ok, stop_pid


@pytest.fixture
def redis_factory(tmp_path):
    """Return ``create(password=None, port=None)`` starting a redis-server."""
    started: list[RedisProcess] = []

    def create(password: str | None = None, port: int | None = None) -> RedisProcess:
        redis = RedisProcess(port=port or free_port(), log=tmp_path / f"redis-{len(started)}.log",
                             password=password)
        started.append(redis)
        redis.start()
        return redis

    yield create
    for redis in started:
        try:
            redis.stop()
        except Exception:  # keep going: the others must stop too
            continue


def _topology(kind: str, base):
    """A started Redis topology of ``kind`` (``chat/tools/redis_topology.py``)."""
    topology = redis_topology.create(kind, base, base / "logs")
    topology.start()
    return topology


@pytest.fixture
def redis_sentinel(tmp_path):
    """A master, its replica and three sentinels (service ``chat``), real
    redis-server processes; ``.url`` is the ``redis+sentinel://`` URL.  The
    test may kill and restart nodes; every one is stopped by PID after it."""
    topology = _topology("sentinel", tmp_path)
    yield topology
    topology.stop()


@pytest.fixture
def redis_cluster(tmp_path):
    """Six redis-server nodes made into a Cluster of 3 masters + 3 replicas
    (ports below 22000, bus ports below 32000); ``.url`` is the
    ``redis+cluster://`` URL.  Every node is stopped by PID after the test."""
    topology = _topology("cluster", tmp_path)
    yield topology
    topology.stop()


class ClusterPool:
    """Brings clusters up in state folders under ``base``; ``close()`` stops all."""

    def __init__(self, base):
        self.base = base
        self.clusters: list[LocalCluster] = []

    def create(self, replicas: int = 3, mode: str = "socketio", proxy: bool = True,
               redis_url: str | None = None, env: dict[str, str] | None = None,
               redis: str = "single") -> LocalCluster:
        cluster = LocalCluster(self.base / f"cluster-{len(self.clusters)}")
        self.clusters.append(cluster)
        cluster.up(replicas=replicas, mode=mode, port=free_port(), redis_url=redis_url,
                   env=env, proxy=proxy, redis=redis)
        return cluster

    def close(self) -> None:
        """Stop every cluster, even if stopping one of them fails."""
        errors = []
        for cluster in self.clusters:
            try:
                cluster.down()
            except Exception as exc:  # keep going: the others must stop too
                errors.append(exc)
        if errors:
            raise errors[0]


@pytest.fixture
def cluster_factory(tmp_path):
    """Return ``create(replicas=3, mode="socketio", proxy=True, ...)``.

    Each call brings up its own Redis, replicas and (unless ``proxy=False``)
    NGINX; the test owns them, so it may kill and restart them.
    """
    pool = ClusterPool(tmp_path)
    yield pool.create
    pool.close()


@pytest.fixture(scope="module")
def shared_clusters(tmp_path_factory):
    """Like ``cluster_factory``, but lives for the module and caches by
    arguments: for tests that only connect clients and leave things as they
    found them.  Starting a cluster costs about two seconds."""
    pool = ClusterPool(tmp_path_factory.mktemp("shared"))
    cache: dict = {}

    def get(replicas: int = 3, mode: str = "socketio", proxy: bool = True,
            env: dict[str, str] | None = None) -> LocalCluster:
        key = (replicas, mode, proxy, tuple(sorted((env or {}).items())))
        if key not in cache:
            cache[key] = pool.create(replicas=replicas, mode=mode, proxy=proxy, env=env)
        return cache[key]

    yield get
    pool.close()


@pytest.fixture
def cluster(cluster_factory) -> LocalCluster:
    """Redis + 3 replicas (socketio mode) + NGINX."""
    return cluster_factory()


@pytest.fixture(params=["socketio", "pubsub"])
def mode(request) -> str:
    return request.param


class ChatClient:
    """A Socket.IO client that records what it receives, for assertions."""

    def __init__(self, name: str, reconnect: bool = False):
        self.name = name
        self.key = secrets.token_hex(16)
        # Reconnecting clients use the page's and chat-client's settings.
        self.sio = socketio.AsyncClient(reconnection=reconnect, reconnection_delay=0.5,
                                        reconnection_delay_max=2, randomization_factor=0.2)
        self.welcome: dict = {}
        self.welcomes: list[dict] = []
        self.messages: list[dict] = []
        self.presence: list[dict] = []
        self.typing: list[dict] = []
        self.refusal = None
        self.disconnects: list = []
        self._changed = asyncio.Event()
        sio = self.sio
        sio.on("welcome", self._record(self._welcomed))
        sio.on("message", self._record(self.messages.append))
        sio.on("presence", self._record(self.presence.append))
        sio.on("typing", self._record(self.typing.append))
        sio.on("connect_error", self._record(lambda d: setattr(self, "refusal", d)))
        sio.on("disconnect", self._record(self.disconnects.append))

    def _record(self, store):
        async def handler(data=None, *_):
            store(data)
            self._changed.set()
        return handler

    def _welcomed(self, data: dict) -> None:
        self.welcome = data
        self.welcomes.append(data)

    @property
    def server(self) -> str:
        return self.welcome.get("server", "")

    async def connect(self, url: str, room: str | None = None, transports=("websocket",),
                      auth: dict | None = None, sticky: str | None = None):
        if auth is None:
            # The same person across this client's reconnections (open mode).
            auth = {"name": self.name, "key": self.key}
            if room is not None:
                auth["room"] = room
        key = sticky or secrets.token_hex(8)
        await self.sio.connect(f"{url}?sticky={key}", auth=auth,
                               transports=list(transports), wait_timeout=10)
        await self.wait_for(lambda: self.welcome)
        return self

    async def send(self, text, timeout: float = 5.0):
        return await self.sio.call("message", {"text": text}, timeout=timeout)

    async def wait_for(self, predicate, timeout: float = 5.0):
        """Wait until ``predicate()`` is true; fail the test on timeout."""
        async def loop():
            while not predicate():
                self._changed.clear()
                await self._changed.wait()
        try:
            await asyncio.wait_for(loop(), timeout)
        except TimeoutError:
            pytest.fail(f"{self.name}: condition not met within {timeout} s")
        return predicate()

    def texts(self) -> list[str]:
        return [m["text"] for m in self.messages]

    def seqs(self) -> list[int]:
        return [m["seq"] for m in self.messages]

    def saw(self, change: str, name: str) -> bool:
        """Whether a ``presence`` event listed ``name`` as joined/left."""
        return any(p["name"] == name for event in self.presence for p in event[change])


@pytest.fixture
async def connect():
    """Return ``await connect(url, name, room=None, reconnect=False, ...)``.

    Every client is disconnected at teardown."""
    clients: list[ChatClient] = []

    async def create(url: str, name: str, reconnect: bool = False, **kwargs) -> ChatClient:
        client = ChatClient(name, reconnect=reconnect)
        clients.append(client)
        return await client.connect(url, **kwargs)

    yield create
    await asyncio.gather(*(c.sio.disconnect() for c in clients), return_exceptions=True)


@pytest.fixture
async def readers():
    """Return ``await open(url, name, room)``: a reconnecting
    :class:`wire.Reader` (a real client session that also records what came
    off the wire); every session is closed at teardown."""
    opened: list[Reader] = []
    async with aiohttp.ClientSession() as http:
        async def open_reader(url, name, room="general") -> Reader:
            reader = Reader(url, name, room, http)
            opened.append(reader)
            await reader.open(10)
            return reader
        yield open_reader
        await asyncio.gather(*(r.close() for r in opened), return_exceptions=True)


@pytest.fixture
def single_node(tmp_path):
    """``python -m chat`` as a newcomer runs it: no Redis, one port."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDIS_")}
    with open(tmp_path / "chat.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "chat", "--port", str(port)], cwd=ROOT,
                                stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while not http_ok(f"{url}/healthz") and time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "chat.log").read_text()
            time.sleep(0.05)
        yield url
    finally:
        stop_pid(proc.pid)
        proc.wait()


def pytest_sessionfinish(session, exitstatus):
    """Every process a test starts is stopped by its test or fixture, even
    when it fails: one still running once every fixture is torn down is a
    leak.  It is named, stopped, and the session fails."""
    from chat.tools.processes import still_running, stop_pids

    left = still_running()
    if left:
        for pid, argv in left:
            print(f"\nleft running after the tests: pid {pid}: {' '.join(argv)[:300]}")
        stop_pids([pid for pid, _ in left])
        session.exitstatus = pytest.ExitCode.TESTS_FAILED

