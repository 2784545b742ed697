"""Numbered messages are shown once each and in order: the pure logic.

The replica's :class:`~chat.delivery.Sequencer` and the
:class:`~chat.history.Cursor` both ends read with run here against the in-process history, with
no server; ``test_history.py`` checks the same promises through real
replicas, Redis and failures.
"""

from __future__ import annotations

import asyncio
import logging
import secrets

import pytest

from chat import delivery
from chat.cursor import Cursor
from chat.delivery import Sequencer
from chat.history import MemoryHistory, Slice, resume_gap
from chat.metrics import Metrics


def numbered(text: str) -> dict:
    """A message as the service stores it: with an id of its own."""
    return {"id": secrets.token_hex(8), "text": text}



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
    stored = [await history.append("r", {"id": f"m{i}", "text": str(i)}) for i in range(5)]
    assert [m["seq"] for m in stored] == [1, 2, 3, 4, 5]
    assert (await history.append("other", {"id": "o", "text": "x"}))["seq"] == 1
    # An id the room's history holds is stored once: the first number again.
    again = await history.append("r", {"id": "m4", "text": "4"})
    assert (again["seq"], again["duplicate"]) == (5, True)
    tail = await history.tail("r", 2)
    assert (tail.last, [m["seq"] for m in tail.messages]) == (5, [4, 5])
    assert [m["seq"] for m in (await history.since("r", 1, 10)).messages] == [3, 4, 5]
    assert [m["seq"] for m in (await history.since("r", 3, 10)).messages] == [4, 5]
    assert [m["seq"] for m in await history.between("r", 2, 5)] == [3, 4]
    # ... for as long as the log holds it: m0 has left the window of 3.
    assert (await history.append("r", {"id": "m0", "text": "0"}))["seq"] == 6


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


async def test_out_of_order_arrivals_are_written_in_order_and_once(caplog):
    room = Room()
    await room.start()
    for seq in (1, 3, 2, 2, 5, 1, 4, 5):
        await room.sequencer.accept("r", msg(seq))
    assert room.written == [1, 2, 3, 4, 5]
    assert caplog.records == []  # nothing to say: not a line per message


async def test_a_second_member_does_not_move_the_line():
    """Members already here set the pace: a newcomer whose history reaches
    further (3) must not make the line skip what they have not been sent."""
    room = Room()
    await room.start(last=1)
    await room.start(last=3)
    for seq in (2, 3):
        await room.sequencer.accept("r", msg(seq))
    assert room.written == [2, 3]


async def test_a_hole_the_live_path_does_not_fill_is_read_from_history(quick):
    room = Room()
    for i in range(1, 6):
        await room.history.append("r", {"id": f"m{i}", "text": str(i)})
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
        await room.history.append("r", numbered(str(i)))
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
        await room.history.append("r", {"id": f"m{i}", "text": str(i)})  # keeps 4 and 5
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
        await room.history.append("r", {"id": f"m{i}", "text": str(i)})  # stored, never relayed
    await room.sequencer.catch_up()  # notes the room's head
    assert room.written == []
    await room.history.append("r", numbered("4"))  # may still be on its way live
    await room.sequencer.catch_up()  # 1-3 still missing a round later: fetched
    assert room.written == [1, 2, 3]
    await room.sequencer.catch_up()  # and 4, a round after it was stored
    assert room.written == [1, 2, 3, 4]


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
