"""Presence kept in this process, for the single node without Redis
(``mode`` memory): the same structures and answers as the Redis scripts of
``presence_store.py``, which explains them."""

from __future__ import annotations

import collections

from .presence_store import ARRIVED, REFUSED, STAYED, Seat


class _Room:
    def __init__(self):
        self.people: dict[str, float] = {}
        self.connections: dict[str, float] = {}
        self.counts: collections.Counter[str] = collections.Counter()
        self.names: dict[str, str] = {}


class MemoryStore:
    def __init__(self):
        self.rooms_: dict[str, _Room] = {}

    async def add(self, room: str, seat: Seat, expires: float, now: float,
                  claim: bool) -> tuple[int, str]:
        r = self.rooms_.setdefault(room, _Room())
        if seat.fold:
            holder = r.names.get(seat.fold)
            if holder in (None, seat.person) or r.people.get(holder, 0) <= now:
                r.names[seat.fold] = seat.person
            elif claim:
                return REFUSED, holder
        status = STAYED
        if seat.member not in r.connections:
            r.counts[seat.person] += 1
            status = ARRIVED if r.counts[seat.person] == 1 else STAYED
        r.connections[seat.member] = expires
        r.people[seat.person] = max(expires, r.people.get(seat.person, 0))
        return status, ""

    async def add_many(self, room: str, seats: list[Seat], expires: float, now: float):
        await self.add_rooms({room: seats}, expires, now)

    async def add_rooms(self, rooms: dict[str, list[Seat]], expires: float, now: float):
        for room, seats in rooms.items():
            for seat in seats:
                await self.add(room, seat, expires, now, claim=False)

    async def remove(self, room: str, seat: Seat) -> bool:
        r = self.rooms_.get(room)
        if r is None or r.connections.pop(seat.member, None) is None:
            return False
        r.counts[seat.person] -= 1
        if r.counts[seat.person] > 0:
            return False
        self._retire(room, r, seat.person)
        if seat.fold and r.names.get(seat.fold) == seat.person:
            del r.names[seat.fold]
        return True

    def _retire(self, room: str, r: _Room, who: str) -> None:
        r.counts.pop(who, None)
        r.people.pop(who, None)
        if not r.people and not r.connections:
            self.rooms_.pop(room, None)

    async def live(self, room: str, now: float, limit: int) -> tuple[list[str], int, int]:
        r = self.rooms_.get(room) or _Room()
        people = [p for p, expires in r.people.items() if expires > now]
        connections = sum(1 for expires in r.connections.values() if expires > now)
        return people[:limit], len(people), connections

    async def expire_rooms(self, rooms: list[str], now: float) -> list[list[str]]:
        return [await self.expire(room, now) for room in rooms]

    async def expire(self, room: str, now: float) -> list[str]:
        r = self.rooms_.get(room)
        if r is None:
            return []
        gone = []
        for member in [m for m, expires in r.connections.items() if expires <= now]:
            del r.connections[member]
            who = member.split("\n", 1)[1]
            r.counts[who] -= 1
            if r.counts[who] <= 0 and who not in gone:
                gone.append(who)
        gone += [p for p, expires in r.people.items() if expires <= now and p not in gone]
        for who in gone:
            self._retire(room, r, who)
        return gone

    async def rooms(self, now: float, limit: int) -> list[tuple[str, int]]:
        live = sorted((room, sum(1 for e in r.people.values() if e > now))
                      for room, r in self.rooms_.items())
        return [(room, count) for room, count in live if count][:limit]
