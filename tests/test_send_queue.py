"""The lighter per-connection send queue keeps asyncio.Queue's promises
where Engine.IO relies on them (``chat/server.py``)."""

from __future__ import annotations

import asyncio

import pytest

from chat.server import SendQueue


async def test_items_come_out_in_order_and_counts_add_up():
    queue = SendQueue()
    assert queue.empty() and queue.qsize() == 0
    for item in "abc":
        await queue.put(item)
    assert queue.qsize() == 3
    assert await queue.get() == "a"
    assert queue.get_nowait() == "b"
    assert await asyncio.wait_for(queue.get(), 1) == "c"
    with pytest.raises(asyncio.QueueEmpty):
        queue.get_nowait()


async def test_a_waiting_reader_gets_the_next_item():
    queue = SendQueue()
    reader = asyncio.ensure_future(asyncio.wait_for(queue.get(), 1))
    await asyncio.sleep(0)
    queue.put_nowait("x")
    assert await reader == "x"
    assert queue.empty()


async def test_a_timed_out_read_loses_nothing():
    queue = SendQueue()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(queue.get(), 0.01)
    queue.put_nowait("after")  # must not go to the cancelled reader
    assert await asyncio.wait_for(queue.get(), 1) == "after"


async def test_join_waits_until_every_item_is_done():
    queue = SendQueue()
    await queue.join()  # nothing to wait for
    queue.put_nowait(1)
    queue.put_nowait(2)
    joined = asyncio.ensure_future(queue.join())
    await asyncio.sleep(0)
    queue.get_nowait()
    queue.task_done()
    await asyncio.sleep(0)
    assert not joined.done()
    queue.get_nowait()
    queue.task_done()
    await asyncio.wait_for(joined, 1)
    with pytest.raises(ValueError):
        queue.task_done()
