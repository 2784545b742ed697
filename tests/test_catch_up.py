"""The Sequencer when things go wrong: a history that does not answer, a
hole the live path fills after all, another epoch, closing; and the catch-up
loop that fetches what never arrived.  Pure logic against the in-process
history (``test_ordering.py`` has the ordinary cases); every test here was
written to kill a survivor of ``make mutation`` (docs/testing.md).
"""

from __future__ import annotations

import asyncio
import logging
import secrets

import pytest
from test_ordering import Room, msg

from chat import delivery
from chat.delivery import Sequencer
from chat.history import HistoryUnavailable, MemoryHistory
from chat.metrics import Metrics


def numbered(text: str) -> dict:
    """A message as the service stores it: with an id of its own."""
    return {"id": secrets.token_hex(8), "text": text}



@pytest.fixture
def quick(monkeypatch):
    monkeypatch.setattr(delivery, "GAP_WAIT", 0.01)


class Unanswering(MemoryHistory):
    """A history whose ``between`` fails ``failures`` times before it answers."""

    def __init__(self, failures: int):
        super().__init__(length=100)
        self.failures = failures

    async def between(self, room, after, before):
        if self.failures:
            self.failures -= 1
            raise HistoryUnavailable("Redis is unreachable (test)")
        return await super().between(room, after, before)


async def hole(room: Room, epoch: str, first: int = 1, then: int = 4) -> asyncio.Task:
    """Feed ``first`` and ``then``; return the filler that the hole started."""
    await room.start(epoch=epoch)
    await room.sequencer.accept("r", msg(first, epoch))
    await room.sequencer.accept("r", msg(then, epoch))
    return room.sequencer.lines["r"].filler


@pytest.mark.parametrize(("failures", "written"), [
    (4, [1, 2, 3, 4]),  # the fifth read answers: the hole is filled
    (5, [1, 4]),  # five reads without an answer, over 0.31 s: given up
])
async def test_a_hole_is_given_up_after_five_reads_without_an_answer(quick, caplog, failures,
                                                                     written):
    room = Room(Unanswering(failures))
    for i in range(1, 5):
        await room.history.append("r", numbered(str(i)))
    started = asyncio.get_running_loop().time()
    await asyncio.wait_for(await hole(room, room.history.epoch), 5)
    assert room.written == written
    lost = [r.getMessage() for r in caplog.records if "lost to this replica" in r.getMessage()]
    if failures == 5:
        assert lost == ["room 'r': messages 2 to 3 are lost to this replica"]
        # The reads back off (0.01 s doubling): a short blip of Redis does not
        # cost the hole at once.
        assert asyncio.get_running_loop().time() - started >= 0.3
    else:
        assert lost == []


async def test_a_hole_the_live_path_fills_in_time_ends_its_filler_quietly(quick):
    room = Room()
    filler = await hole(room, room.history.epoch, 1, 3)
    await room.sequencer.accept("r", msg(2, room.history.epoch))
    await asyncio.wait_for(filler, 5)  # no exception
    assert room.written == [1, 2, 3]
    assert room.sequencer.metrics.recovered._value.get() == 0


@pytest.mark.parametrize("line_epoch", ["zz", "0"])  # sorts after, before any hex epoch
async def test_the_history_of_another_epoch_does_not_fill_a_hole(quick, line_epoch):
    room = Room()
    for i in range(1, 5):
        await room.history.append("r", numbered(str(i)))
    await asyncio.wait_for(await hole(room, line_epoch), 5)
    assert room.written == [1, 4]


async def test_closing_cancels_the_fillers_quietly(quick):
    room = Room(Unanswering(failures=100))
    filler = await hole(room, room.history.epoch)
    await room.sequencer.close()
    assert filler.cancelled()


# -- the catch-up loop ----------------------------------------------------------

class Flaky(MemoryHistory):
    """A history whose ``heads`` raises ``error`` ``failures`` times before
    it answers."""

    def __init__(self, failures: int, error: type[Exception] = HistoryUnavailable):
        super().__init__(length=100)
        self.failures = failures
        self.error = error

    async def heads(self, rooms):
        if self.failures:
            self.failures -= 1
            raise self.error("Redis is unreachable (test)")
        return await super().heads(rooms)


@pytest.mark.parametrize(("error", "logged"), [
    (HistoryUnavailable, (1, 1)),  # Redis away: said once when it starts, once when it ends
    (RuntimeError, (3, 0)),  # a bug: every time, with its traceback
])
async def test_the_catch_up_loop_runs_and_outlives_a_failing_history(caplog, error, logged):
    caplog.set_level(logging.INFO, logger="test")
    room = Room(Flaky(failures=3, error=error))
    room.sequencer.catch_up_every = 0.01
    await room.start(epoch=room.history.epoch)
    for i in range(1, 4):
        await room.history.append("r", numbered(str(i)))  # stored, never relayed
    loop = asyncio.ensure_future(room.sequencer.run())
    try:
        async with asyncio.timeout(5):
            while room.written != [1, 2, 3]:
                await asyncio.sleep(0.01)
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
    failed = [r for r in caplog.records if "catching up failed" in r.getMessage()]
    again = [r for r in caplog.records if "catching up again" in r.getMessage()]
    assert (len(failed), len(again)) == logged


async def test_the_catch_up_loop_can_be_off():
    room = Room()
    room.sequencer.catch_up_every = 0
    await room.start(epoch=room.history.epoch)
    await room.history.append("r", numbered("never relayed"))
    await asyncio.wait_for(room.sequencer.run(), 1)  # returns at once
    assert room.written == []


async def test_catch_up_reads_every_room_and_forgets_empty_ones():
    written = []
    members = {"empty": False, "unknown": True, "quiet": True, "r": True}
    history = MemoryHistory(length=100)

    async def write(room, message):
        written.append((room, message["seq"]))

    sequencer = Sequencer(history, write, members.__getitem__, Metrics("t", "memory"),
                          logging.getLogger("test"))
    for name, epoch in (("empty", history.epoch), ("unknown", None), ("quiet", history.epoch),
                        ("r", history.epoch)):
        async with sequencer.entering(name) as start:
            start(epoch, 0)
    await history.append("r", numbered("1"))
    await sequencer.catch_up()
    await sequencer.catch_up()
    assert written == [("r", 1)]  # past the unknown and the up-to-date rooms
    assert list(sequencer.lines) == ["unknown", "quiet", "r"]  # nobody is in "empty" any more


@pytest.mark.parametrize("old", ["gone", "0"])  # sorts after, before any hex epoch
async def test_after_a_reset_the_catch_up_starts_the_new_numbering_at_one(caplog, old):
    room = Room()
    await room.start(epoch=old, last=40)  # Redis came back empty since
    for i in range(1, 4):
        await room.history.append("r", numbered(str(i)))
    await room.sequencer.catch_up()
    assert room.written == [1, 2, 3]
    assert any(f"was reset (epoch {old} ->" in r.getMessage() for r in caplog.records)
