"""Numbered messages are shown once each and in order: the pure logic.

The replica's :class:`~chat.delivery.Sequencer` and the
:class:`~chat.history.Cursor` both ends read with run here against the in-process history, with
no server; ``test_history.py`` checks the same promises through real
replicas, Redis and failures.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from chat import delivery
from chat.delivery import Sequencer
from chat.history import Cursor, HistoryUnavailable, MemoryHistory, Slice, resume_gap
from chat.metrics import Metrics


def msg(seq: int, epoch: str = "e1") -> dict:
    return {"seq": seq, "epoch": epoch, "text": f"m{seq}"}


# -- resume_gap ---------------------------------------------------------------

def test_a_resume_is_exact_when_the_history_continues_the_client():
    piece = Slice("e1", 7, [msg(5), msg(6), msg(7)])
    assert resume_gap(piece, "e1", 4) is None
    assert resume_gap(Slice("e1", 7, []), "e1", 7) is None  # missed nothing


def test_a_resume_beyond_the_window_or_across_a_reset_says_so():
    assert "more messages than the history keeps" in resume_gap(
        Slice("e1", 9, [msg(8), msg(9)]), "e1", 4)
    assert "reset" in resume_gap(Slice("e2", 9, [msg(1, "e2")]), "e1", 4)
    assert "reset" in resume_gap(Slice("e1", 3, []), "e1", 8)  # ahead of the room


# -- MemoryHistory --------------------------------------------------------------

async def test_memory_history_numbers_and_caps_each_room():
    history = MemoryHistory(length=3)
    stored = [await history.append("r", {"text": str(i)}) for i in range(5)]
    assert [m["seq"] for m in stored] == [1, 2, 3, 4, 5]
    assert (await history.append("other", {"text": "x"}))["seq"] == 1
    tail = await history.tail("r", 2)
    assert (tail.last, [m["seq"] for m in tail.messages]) == (5, [4, 5])
    assert [m["seq"] for m in (await history.since("r", 1, 10)).messages] == [3, 4, 5]
    assert [m["seq"] for m in await history.between("r", 2, 5)] == [3, 4]


# -- Sequencer ------------------------------------------------------------------

class Room:
    """A sequencer for one room with members, recording what it writes."""

    def __init__(self, history=None):
        self.history = history or MemoryHistory(length=100)
        self.written: list[int] = []
        self.sequencer = Sequencer(self.history, self.write, lambda room: True,
                                   Metrics("t", "memory"), logging.getLogger("test"))

    async def write(self, room, message):
        self.written.append(message["seq"])

    async def start(self, epoch="e1", last=0):
        async with self.sequencer.entering("r") as start:
            start(epoch, last)


@pytest.fixture
def quick(monkeypatch):
    monkeypatch.setattr(delivery, "GAP_WAIT", 0.01)


async def test_out_of_order_arrivals_are_written_in_order_and_once():
    room = Room()
    await room.start()
    for seq in (1, 3, 2, 2, 5, 1, 4, 5):
        await room.sequencer.accept("r", msg(seq))
    assert room.written == [1, 2, 3, 4, 5]


async def test_a_hole_the_live_path_does_not_fill_is_read_from_history(quick):
    room = Room()
    for i in range(1, 6):
        await room.history.append("r", {"text": str(i)})
    await room.start(epoch=room.history.epoch)
    epoch = room.history.epoch
    await room.sequencer.accept("r", msg(1, epoch))
    await room.sequencer.accept("r", msg(4, epoch))
    assert room.written == [1]
    await asyncio.sleep(0.1)
    assert room.written == [1, 2, 3, 4]


async def test_every_hole_before_the_last_waiting_number_is_read(quick):
    """Two holes (2 and 4-5) wait at once: both are read from the history,
    neither is given up while the history holds it."""
    room = Room()
    for i in range(1, 8):
        await room.history.append("r", {"text": str(i)})
    epoch = room.history.epoch
    await room.start(epoch=epoch)
    for seq in (1, 3, 6, 7):
        await room.sequencer.accept("r", msg(seq, epoch))
    await asyncio.sleep(0.1)
    assert room.written == [1, 2, 3, 4, 5, 6, 7]
    assert room.sequencer.metrics.recovered._value.get() == 3


async def test_a_hole_the_history_no_longer_holds_is_skipped(quick):
    room = Room(MemoryHistory(length=2))
    for i in range(1, 6):
        await room.history.append("r", {"text": str(i)})  # keeps 4 and 5
    epoch = room.history.epoch
    await room.start(epoch=epoch)
    await room.sequencer.accept("r", msg(1, epoch))
    await room.sequencer.accept("r", msg(5, epoch))
    await asyncio.sleep(0.1)
    assert room.written == [1, 4, 5]


async def test_catch_up_fetches_what_never_arrived():
    room = Room()
    epoch = room.history.epoch
    await room.start(epoch=epoch)
    for i in range(1, 4):
        await room.history.append("r", {"text": str(i)})  # stored, never relayed
    await room.sequencer.catch_up()  # notes the room's head
    assert room.written == []
    await room.sequencer.catch_up()  # still missing a round later: fetched
    assert room.written == [1, 2, 3]


async def test_a_new_epoch_starts_the_numbering_again():
    room = Room()
    await room.start(last=7)
    await room.sequencer.accept("r", msg(8))
    await room.sequencer.accept("r", msg(1, "e2"))
    assert room.written == [8, 1]


async def test_a_first_member_starts_where_its_history_ends():
    room = Room()
    await room.start(last=10)
    await room.sequencer.accept("r", msg(9))  # already in the member's history
    await room.sequencer.accept("r", msg(11))
    assert room.written == [11]


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
        await room.history.append("r", {"text": str(i)})
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


async def test_the_history_of_another_epoch_does_not_fill_a_hole(quick):
    room = Room()  # its history's epoch is hex: sorts before "zz"
    for i in range(1, 5):
        await room.history.append("r", {"text": str(i)})
    await asyncio.wait_for(await hole(room, "zz"), 5)
    assert room.written == [1, 4]


async def test_closing_cancels_the_fillers_quietly(quick):
    room = Room(Unanswering(failures=100))
    filler = await hole(room, room.history.epoch)
    await room.sequencer.close()
    assert filler.cancelled()


# -- the catch-up loop ----------------------------------------------------------

class Flaky(MemoryHistory):
    """A history whose ``heads`` fails ``failures`` times before it answers."""

    def __init__(self, failures: int):
        super().__init__(length=100)
        self.failures = failures

    async def heads(self, rooms):
        if self.failures:
            self.failures -= 1
            raise HistoryUnavailable("Redis is unreachable (test)")
        return await super().heads(rooms)


async def test_the_catch_up_loop_runs_and_outlives_a_failing_history(caplog):
    caplog.set_level(logging.INFO, logger="test")
    room = Room(Flaky(failures=2))
    room.sequencer.catch_up_every = 0.01
    await room.start(epoch=room.history.epoch)
    for i in range(1, 4):
        await room.history.append("r", {"text": str(i)})  # stored, never relayed
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
    assert (len(failed), len(again)) == (1, 1)  # each change of state said once


async def test_the_catch_up_loop_can_be_off():
    room = Room()
    room.sequencer.catch_up_every = 0
    await room.start(epoch=room.history.epoch)
    await room.history.append("r", {"text": "never relayed"})
    await asyncio.wait_for(room.sequencer.run(), 1)  # returns at once
    assert room.written == []


async def test_catch_up_reads_every_room_and_forgets_empty_ones():
    written = []
    members = {"empty": False, "unknown": True, "r": True}
    history = MemoryHistory(length=100)

    async def write(room, message):
        written.append((room, message["seq"]))

    sequencer = Sequencer(history, write, members.__getitem__, Metrics("t", "memory"),
                          logging.getLogger("test"))
    for name, epoch in (("empty", history.epoch), ("unknown", None), ("r", history.epoch)):
        async with sequencer.entering(name) as start:
            start(epoch, 0)
    await history.append("r", {"text": "1"})
    await sequencer.catch_up()
    await sequencer.catch_up()
    assert written == [("r", 1)]  # past the room whose position is unknown
    assert list(sequencer.lines) == ["unknown", "r"]  # nobody is in "empty" any more


async def test_after_a_reset_the_catch_up_starts_the_new_numbering_at_one(caplog):
    room = Room()
    await room.start(epoch="gone", last=40)  # Redis came back empty since
    for i in range(1, 4):
        await room.history.append("r", {"text": str(i)})
    await room.sequencer.catch_up()
    assert room.written == [1, 2, 3]
    assert any("was reset (epoch gone ->" in r.getMessage() for r in caplog.records)


# -- Cursor (the client side) ------------------------------------------------------

def test_the_cursor_drops_duplicates_and_holds_messages_behind_a_hole():
    cursor = Cursor()
    cursor.restart("e1", 3)
    assert cursor.feed(msg(3)) == []
    assert [m["seq"] for m in cursor.feed(msg(4))] == [4]
    assert cursor.feed(msg(6)) == [] and cursor.behind
    assert [m["seq"] for m in cursor.feed(msg(5))] == [5, 6]
    assert not cursor.behind
    assert cursor.resume() == {"epoch": "e1", "seq": 6}


def test_the_cursor_can_give_up_on_a_hole_and_follows_a_new_epoch():
    cursor = Cursor()
    cursor.restart("e1", 1)
    cursor.feed(msg(4))
    assert [m["seq"] for m in cursor.skip()] == [4]
    assert [m["seq"] for m in cursor.feed(msg(1, "e2"))] == [1]
    assert cursor.resume() == {"epoch": "e2", "seq": 1}
