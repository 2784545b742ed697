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


class Packet:
    def __init__(self, data):
        self.data = data


async def test_over_its_limit_the_queue_drops_everything_and_says_so_once():
    overflows = []
    queue = SendQueue(limit=100, overflow=lambda q, backlog: overflows.append(backlog))
    queue.put_nowait(Packet("x" * 60))
    assert queue.size == 60 and not overflows
    joined = asyncio.ensure_future(queue.join())
    queue.put_nowait(Packet("y" * 60))  # 120 > 100
    assert overflows == [120]
    assert queue.empty() and queue.size == 0
    queue.put_nowait(Packet("z"))  # refused from now on
    assert queue.empty() and overflows == [120]
    await asyncio.wait_for(joined, 1)  # nothing left to wait for
    queue.put_nowait(None)  # Engine.IO's "stop" still reaches the writer
    assert await asyncio.wait_for(queue.get(), 1) is None


async def test_the_limit_counts_the_transport_buffer_too():
    class Transport:
        def get_write_buffer_size(self):
            return 90

    overflows = []
    queue = SendQueue(limit=100, overflow=lambda q, backlog: overflows.append(backlog))
    queue.transport = Transport()
    queue.put_nowait(Packet("x" * 20))
    assert overflows == [110]
