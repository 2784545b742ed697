"""One loop timer for every connection's ping and pong deadline
(``chat/deadlines.py``): nothing runs early, nor more than a tick late,
a replaced or cancelled deadline does not run, and the timer stops when
nothing is filed."""

from __future__ import annotations

import asyncio

from chat.deadlines import TICK, Deadlines


class Owner:
    deadline_tick = None

    def __init__(self, name: str, ran: list) -> None:
        self.name, self.ran = name, ran

    def due(self) -> None:
        self.ran.append((self.name, asyncio.get_running_loop().time()))


async def test_each_runs_once_in_order_not_early_and_at_most_a_tick_late():
    loop, ran, deadlines = asyncio.get_running_loop(), [], Deadlines()
    start = loop.time()
    delays = {"c": 0.35, "a": 0.05, "b": 0.2}
    for name, delay in delays.items():
        owner = Owner(name, ran)
        deadlines.set(owner, delay, owner.due)
    assert len(deadlines) == 3
    await asyncio.sleep(0.35 + 2 * TICK)
    assert [name for name, _ in ran] == ["a", "b", "c"]
    for name, at in ran:
        late = at - start - delays[name]
        assert -0.002 <= late <= TICK + 0.05, (name, late)
    assert len(deadlines) == 0 and deadlines._timer is None


async def test_filing_again_replaces_and_cancel_removes():
    ran, deadlines = [], Deadlines()
    kept, dropped = Owner("kept", ran), Owner("dropped", ran)
    deadlines.set(kept, 0.3, kept.due)
    deadlines.set(kept, 0.05, kept.due)  # an earlier deadline re-arms the timer
    deadlines.set(dropped, 0.05, dropped.due)
    deadlines.cancel(dropped)
    deadlines.cancel(dropped)  # twice is harmless
    await asyncio.sleep(0.2)
    assert [name for name, _ in ran] == ["kept"]
    await asyncio.sleep(0.3)
    assert [name for name, _ in ran] == ["kept"] and kept.deadline_tick is None


async def test_a_callback_may_file_the_next_deadline_and_cancel_another():
    """What a ping does: its callback files the pong deadline; and one
    connection's callback cancelling another due in the same tick wins."""
    ran, deadlines = [], Deadlines()
    first, second = Owner("first", ran), Owner("second", ran)

    def ping() -> None:
        ran.append(("ping", 0))
        deadlines.cancel(second)
        deadlines.set(first, 0.1, first.due)

    deadlines.set(second, 0.1, second.due)
    deadlines.set(first, 0.1, ping)
    # Both in one tick; whichever runs first, the ping cancels the other
    # only if the other has not run yet, so count what ran.
    await asyncio.sleep(0.4)
    names = [name for name, _ in ran]
    assert names.count("ping") == 1 and names.count("first") == 1
    assert names.count("second") <= 1 and names[-1] == "first"
    assert len(deadlines) == 0


async def test_a_failing_callback_stops_no_other():
    ran, deadlines = [], Deadlines()
    loop = asyncio.get_running_loop()
    errors = []
    loop.set_exception_handler(lambda loop, context: errors.append(context["exception"]))
    try:
        broken, fine = Owner("broken", ran), Owner("fine", ran)

        def fail() -> None:
            raise RuntimeError("boom")

        deadlines.set(broken, 0.05, fail)
        deadlines.set(fine, 0.05, fine.due)
        await asyncio.sleep(0.3)
    finally:
        loop.set_exception_handler(None)
    assert [name for name, _ in ran] == ["fine"]
    assert [str(error) for error in errors] == ["boom"]


async def test_connections_that_come_and_go_leave_no_deadline_socket_or_drain_entry():
    """300 WebSockets opened and closed, some before their Socket.IO connect
    and some before its answer: nothing of them stays filed (their ping
    deadline, Engine.IO's socket, the drain's connection set).  aiohttp's
    test server cancels a handler whose client went away: the session must
    end all the same (it lingered until its pong deadline)."""
    import json

    import aiohttp
    from aiohttp.test_utils import TestServer

    from chat.app import create_app
    from chat.appkeys import SIO
    from chat.settings import Settings
    from chat.websocket import CONNECTIONS

    app = create_app(Settings(server_id="t", ping_interval=5, ping_timeout=5,
                              rooms_per_minute=100000))
    async with TestServer(app) as server:
        url = str(server.make_url("/socket.io/?EIO=4&transport=websocket"))
        async with aiohttp.ClientSession() as session:
            for i in range(300):
                ws = await session.ws_connect(url)
                if i % 3:
                    await ws.receive(timeout=5)  # Engine.IO's OPEN
                    await ws.send_str("40" + json.dumps({"name": f"c{i}"}))
                    if i % 2:
                        await ws.receive(timeout=5)
                await ws.close()
        eio = app[SIO].eio
        for _ in range(50):  # the server's side of the last closes
            if not (len(eio.deadlines) or eio.sockets or app[CONNECTIONS]):
                break
            await asyncio.sleep(0.02)
        assert (len(eio.deadlines), len(eio.sockets), len(app[CONNECTIONS])) == (0, 0, 0)
