"""The Socket.IO Admin UI: an operator's view of every replica's sockets.

With ``ADMIN_PASSWORD`` set, each replica calls python-socketio's
``instrument()`` in *production* mode, read-only: the ``/admin`` namespace
accepts the UI (user ``admin`` and that password, compared in constant time)
and every replica emits its ``server_stats`` there every two seconds, across
the backplane, so the UI connected to any one replica lists them all.  The
replica an admin logs in on sends it its own sockets at once (``all_sockets``).

Production mode reports no sockets (development mode reports every socket at
every ping and every event, which costs each replica work per message).
:class:`Roster` lists them at a bounded cost instead: every ``EVERY``
seconds, while an operator watches, each replica emits ``socket_connected``
for at most ``MOST`` of its chat sockets, and ``socket_disconnected`` for
those it listed that are gone, so the UI's Sockets page shows every
replica's sockets within ``EVERY`` seconds.  Whether anyone watches is known
across replicas through one Redis key (``C:admin:watching``), set for
``WATCH_TTL`` seconds by each replica that holds an admin connection.  A
socket is described by its id, transport, address, room, name and user id:
not its request headers, which hold cookies and tokens.

The UI itself is the npm package ``@socket.io/admin-ui`` (pinned in
package.json), copied to ``web/admin/`` by ``make install`` and served by
NGINX at ``/admin/``.
"""

from __future__ import annotations

import asyncio
import datetime
import hmac
import logging

from redis.exceptions import RedisError

EVERY = 5.0  # seconds between two rosters of one replica
MOST = 500  # sockets one replica lists per roster
WATCH_TTL = 60  # seconds an admin connection keeps the replicas reporting
ADMIN_NAMESPACE = "/admin"
USERNAME = "admin"


class Roster:
    def __init__(self, sio, namespace, settings, *, redis=None, key: str = "",
                 logger: logging.Logger):
        self.sio = sio
        self.chat = namespace
        self.server_id = settings.server_id
        self.password = settings.admin_password
        self.redis = redis
        self.key = key
        self.log = logger
        self.listed: set[str] = set()
        self.instrumented = None  # python-socketio's InstrumentedAsyncServer
        self._greeting: asyncio.Future | None = None

    async def check(self, auth) -> bool:
        """The Admin UI's login: user ``admin`` and ADMIN_PASSWORD."""
        if not isinstance(auth, dict):
            return False
        user, password = str(auth.get("username", "")), str(auth.get("password", ""))
        ok = (hmac.compare_digest(user.encode(), USERNAME.encode())
              & hmac.compare_digest(password.encode(), self.password.encode()))
        self.log.info("admin UI login %s", "accepted" if ok else "refused")
        if ok:
            await self._watch()
            self._greeting = asyncio.ensure_future(self._greet())
        return ok

    async def _greet(self) -> None:
        """A new admin gets this replica's sockets as ``all_sockets`` (the UI
        then selects the ``/`` namespace); the other replicas' follow with
        their next roster."""
        await asyncio.sleep(0.5)  # after python-socketio's own "config"
        sockets = [s for s in (self.describe(sid, eio_sid) for sid, eio_sid in list(
            self.sio.manager.get_participants("/", None))[:MOST]) if s is not None]
        self.listed = {s["id"] for s in sockets}
        await self.sio.emit("all_sockets", sockets, namespace=ADMIN_NAMESPACE)

    def _admins_here(self) -> int:
        return len(self.sio.manager.rooms.get(ADMIN_NAMESPACE, {}).get(None, {}))

    async def _watch(self) -> None:
        if self.redis is not None:
            await self.redis.set(self.key, self.server_id, ex=WATCH_TTL)

    async def watched(self) -> bool:
        if self._admins_here():
            await self._watch()
            return True
        if self.redis is None:
            return False
        return bool(await self.redis.exists(self.key))

    def describe(self, sid: str, eio_sid: str) -> dict | None:
        client = self.chat.clients.get(sid)
        socket = self.sio.eio.sockets.get(eio_sid)
        if client is None or socket is None:
            return None
        environ = self.sio.environ.get(eio_sid, {})
        return {
            "id": sid, "clientId": eio_sid, "nsp": "/",
            "transport": "websocket" if socket.upgraded else "polling",
            "data": {"name": client.name, "user": client.identity.user,
                     "room": client.room, "server": self.server_id},
            "handshake": {"address": client.address, "headers": {}, "query": {},
                          "secure": environ.get("wsgi.url_scheme") == "https",
                          "url": environ.get("PATH_INFO", ""), "issued": 0, "time": ""},
            "rooms": [sid, client.room],
        }

    async def report(self) -> None:
        now = datetime.datetime.now(datetime.UTC).isoformat()
        listed = set()
        for sid, eio_sid in list(self.sio.manager.get_participants("/", None))[:MOST]:
            socket = self.describe(sid, eio_sid)
            if socket is not None:
                listed.add(sid)
                await self.sio.emit("socket_connected", (socket, now),
                                    namespace=ADMIN_NAMESPACE)
        for sid in self.listed - listed:
            await self.sio.emit("socket_disconnected", ("/", sid, "gone", now),
                                namespace=ADMIN_NAMESPACE)
        self.listed = listed

    async def run(self) -> None:
        """Report every EVERY seconds while watched (a lifetime task)."""
        while True:
            await asyncio.sleep(EVERY)
            try:
                if await self.watched():
                    await self.report()
                else:
                    self.listed = set()
            except (OSError, RedisError) as exc:
                self.log.debug("admin roster: %s", exc)
            except Exception:
                self.log.exception("admin roster failed")


    async def close(self) -> None:
        """Stop the instrumentation's stats task (it would outlive the loop)."""
        task = getattr(self.instrumented, "stats_task", None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def setup_admin(sio, namespace, settings, *, redis, key: str,
                logger: logging.Logger) -> Roster | None:
    """Instrument ``sio`` for the Admin UI when ADMIN_PASSWORD is set."""
    if not settings.admin_password:
        return None
    roster = Roster(sio, namespace, settings, redis=redis, key=key,
                    logger=logger.getChild("admin"))
    roster.instrumented = sio.instrument(auth=roster.check, mode="production", read_only=True,
                                         server_id=settings.server_id,
                                         namespace=ADMIN_NAMESPACE)
    return roster
