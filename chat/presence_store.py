"""Where presence lives: people and their connections per room, in Redis or
in this process.

Per room R (``redis_keys.py``)::

    C:room:{R}:presence     zset  person [user, name] -> expiry (ms): the people
    C:room:{R}:connections  zset  "<connection id>\\n<person>" -> expiry (ms)
    C:room:{R}:counts       hash  person -> how many of its connections are in R
    C:room:{R}:names        hash  fold -> person holding that name (open mode)
    C:rooms               zset  room -> expiry (ms): rooms with anyone in them

A person is in a room while one of its connections is: two tabs of one user
are one person and two connections.  Each script below runs atomically in
Redis, so two replicas adding or removing connections of one person agree
on when that person arrived (``ADD`` answers 1: the first connection) and
left (``REMOVE`` answers 1: the last one).

* ``ADD`` is also the refresh: a connection already there only has its
  expiry pushed on, so adding twice counts once.  With ``claim`` it first
  refuses (answers -1 and the holder) when the name's fold is held by
  another person who is still live; a stale holder's claim is taken over.
* ``REMOVE`` removes a connection only if it is there, so removing twice
  (the refresh's second removal, ``presence.py``) counts once too.
* ``EXPIRE`` retires the connections of a replica that stopped refreshing
  (it crashed) and, with them, the people left with none; and people whose
  own entry expired.  Each is retired, and announced, by one replica.

``MemoryStore`` (``presence_memory.py``) keeps the same structures for the
single node.
"""

from __future__ import annotations

import dataclasses

from redis.exceptions import NoScriptError

from . import jsonio
from .history import EMPTY_EXPIRY_MS, as_text
from .redis_keys import RedisKeys

ADD = """
local person, fold = ARGV[2], ARGV[3]
if fold ~= '' then
  local holder = redis.call('HGET', KEYS[4], fold)
  local free = (not holder) or holder == person
  if not free then
    local score = redis.call('ZSCORE', KEYS[1], holder)
    free = (not score) or tonumber(score) <= tonumber(ARGV[5])
  end
  if free then
    redis.call('HSET', KEYS[4], fold, person)
  elseif ARGV[8] == '1' then
    return {-1, holder}
  end
end
local status = 0
if redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1]) == 1 then
  if redis.call('HINCRBY', KEYS[3], person, 1) == 1 then status = 1 end
end
redis.call('ZADD', KEYS[1], 'GT', ARGV[4], person)
for i = 1, 4 do redis.call('PEXPIRE', KEYS[i], ARGV[6]) end
redis.call('PEXPIRE', KEYS[5], ARGV[7], 'GT')
return {status, ''}
"""
REMOVE = """
if redis.call('ZREM', KEYS[2], ARGV[1]) == 0 then return 0 end
if redis.call('HINCRBY', KEYS[3], ARGV[2], -1) > 0 then return 0 end
redis.call('HDEL', KEYS[3], ARGV[2])
redis.call('ZREM', KEYS[1], ARGV[2])
if ARGV[3] ~= '' and redis.call('HGET', KEYS[4], ARGV[3]) == ARGV[2] then
  redis.call('HDEL', KEYS[4], ARGV[3])
end
return 1
"""
EXPIRE = """
local gone, seen = {}, {}
local function retire(person)
  if seen[person] then return end
  seen[person] = true
  redis.call('HDEL', KEYS[3], person)
  redis.call('ZREM', KEYS[1], person)
  table.insert(gone, person)
end
for _, conn in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])) do
  local person = string.sub(conn, string.find(conn, '\\n', 1, true) + 1)
  if redis.call('HINCRBY', KEYS[3], person, -1) <= 0 then retire(person) end
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
for _, person in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])) do
  retire(person)
end
return gone
"""
ARRIVED, STAYED, REFUSED = 1, 0, -1
ROOMS_SCANNED = 10_000  # the most live rooms one rooms() call reads
BATCH = 500  # script calls per pipeline of a refresh


@dataclasses.dataclass(frozen=True, slots=True)
class Seat:
    """One connection of one person in one room."""

    conn: str  # the connection's id
    person: str  # the person's entry: JSON [user, name]
    fold: str  # open mode: the name's fold; "" when names are not compared

    @property
    def member(self) -> str:
        return f"{self.conn}\n{self.person}"


def entry(user: str, name: str) -> str:
    return jsonio.dumps([user, name])


def person(raw: str) -> dict:
    user, name = jsonio.loads_own(raw)
    return {"id": user, "name": name}


class RedisStore:
    def __init__(self, client, *, keys: RedisKeys, ttl: float):
        self.redis = client
        self.keys = keys
        self.key_ttl_ms = int(ttl * 3000)  # a room nobody refreshes goes away
        # While a room has members, its meta hash (history.py) lives on even
        # if nobody ever writes in it.
        self.meta_ttl_ms = max(EMPTY_EXPIRY_MS, self.key_ttl_ms)
        self._add = client.register_script(ADD)
        self._remove = client.register_script(REMOVE)
        self._expire = client.register_script(EXPIRE)

    def _keys(self, room: str) -> list[str]:
        k = self.keys
        return [k.room_presence(room), k.room_connections(room), k.room_counts(room),
                k.room_names(room)]

    def _add_args(self, room, seat: Seat, expires: float, now: float, claim: bool):
        return ([*self._keys(room), self.keys.room_meta(room)],
                [seat.member, seat.person, seat.fold, int(expires * 1000),
                 int(now * 1000), self.key_ttl_ms, self.meta_ttl_ms, int(claim)])

    async def add(self, room: str, seat: Seat, expires: float, now: float,
                  claim: bool) -> tuple[int, str]:
        (status, holder), = await self._scripts(
            self._add, ADD, [self._add_args(room, seat, expires, now, claim)],
            lambda pipe: self._live(pipe, [room], expires))
        return int(status), as_text(holder)

    async def add_many(self, room: str, seats: list[Seat], expires: float, now: float):
        await self.add_rooms({room: seats}, expires, now)

    async def add_rooms(self, rooms: dict[str, list[Seat]], expires: float, now: float):
        """ADD every seat of every room (the refresh), a round trip per
        about ``BATCH`` seats rather than one per room."""
        calls, marked = [], []
        for room, seats in [*rooms.items(), (None, [])]:
            if calls and (room is None or len(calls) >= BATCH):
                await self._scripts(self._add, ADD, calls,
                                    lambda pipe, rooms=marked: self._live(pipe, rooms, expires))
                calls, marked = [], []
            if room is not None:
                calls += [self._add_args(room, seat, expires, now, False) for seat in seats]
                marked.append(room)

    async def _scripts(self, script, source: str, calls: list[tuple], also=None) -> list:
        """Run ``script`` for each ``(keys, args)`` of ``calls``, then the
        commands ``also(pipe)`` adds, in one pipeline; return the scripts'
        answers.  EVALSHA is sent as a plain command: a Redis Cluster
        pipeline refuses redis-py's script objects.  A node that does not
        know the script yet (new, restarted, promoted) gets it loaded, and
        only the calls it refused are sent again."""
        answers: list = [None] * len(calls)
        pending = list(range(len(calls)))
        for attempt in range(2):
            async with self.redis.pipeline(transaction=False) as pipe:
                for i in pending:
                    keys, args = calls[i]
                    pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
                if also is not None:
                    also(pipe)
                replies = (await pipe.execute(raise_on_error=False))[:len(pending)]
            refused = [i for i, reply in zip(pending, replies, strict=True)
                       if isinstance(reply, NoScriptError)]
            for i, reply in zip(pending, replies, strict=True):
                if isinstance(reply, Exception) and not (refused and attempt == 0
                                                         and i in refused):
                    raise reply
                answers[i] = reply
            if not refused:
                break
            await self.redis.script_load(source)
            pending, also = refused, None  # (what `also` sent was not refused)
        return answers

    def _live(self, pipe, rooms: list[str], expires: float) -> None:
        # Commands of their own, not in the scripts: the rooms index is not
        # one room's key.  One ZADD marks every room of a batch.
        pipe.zadd(self.keys.rooms, dict.fromkeys(rooms, expires * 1000), gt=True)
        pipe.pexpire(self.keys.rooms, self.key_ttl_ms)

    async def remove(self, room: str, seat: Seat) -> bool:
        return bool(await self._remove(keys=self._keys(room),
                                       args=[seat.member, seat.person, seat.fold]))

    async def live(self, room: str, now: float, limit: int) -> tuple[list[str], int, int]:
        people, connections = self._keys(room)[:2]
        since = f"({now * 1000}"
        async with self.redis.pipeline(transaction=False) as pipe:
            if limit:
                pipe.zrangebyscore(people, since, "+inf", start=0, num=limit)
            pipe.zcount(people, since, "+inf")
            pipe.zcount(connections, since, "+inf")
            *entries, count, conns = await pipe.execute()
        return [as_text(e) for e in (entries[0] if entries else [])], int(count), int(conns)

    async def expire(self, room: str, now: float) -> list[str]:
        return (await self.expire_rooms([room], now))[0]

    async def expire_rooms(self, rooms: list[str], now: float) -> list[list[str]]:
        """EXPIRE in each of ``rooms``: who left each, a round trip per BATCH rooms."""
        gone = []
        for start in range(0, len(rooms), BATCH):
            gone += await self._scripts(self._expire, EXPIRE, [
                (self._keys(room), [int(now * 1000)]) for room in rooms[start:start + BATCH]])
        return [[as_text(e) for e in entries] for entries in gone]

    async def rooms(self, now: float, limit: int) -> list[tuple[str, int]]:
        """Live rooms (by name, at most ``limit``) and their people counts."""
        since = f"({now * 1000}"
        names = [as_text(r) for r in await self.redis.zrangebyscore(
            self.keys.rooms, since, "+inf", start=0, num=ROOMS_SCANNED)]
        names = sorted(names)[:limit]
        async with self.redis.pipeline(transaction=False) as pipe:
            for room in names:
                pipe.zcount(self.keys.room_presence(room), since, "+inf")
            counts = await pipe.execute()
        return [(room, int(count)) for room, count in zip(names, counts, strict=True) if count]
