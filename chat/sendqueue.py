"""The per-connection queue Engine.IO's writer takes packets from, lighter
than ``asyncio.Queue`` and bounded in bytes (``MAX_QUEUED_BYTES``).

``chat.server.ChatServer`` gives every Engine.IO connection one; a client
that stops reading fills its queue past the limit, and the server then
closes that connection (``chat/guard.py``).  A WebSocket's queue is
written by a :class:`Writer`, a task only while there is something to write.
"""

from __future__ import annotations

import asyncio


class SendQueue:
    """The per-connection queue Engine.IO's writer takes packets from.

    Engine.IO gives every connection an ``asyncio.Queue`` (four deques and an
    Event: about 2.4 KB) and its writer waits on it with
    ``asyncio.wait_for(queue.get(), ...)``, which wraps the ``get()``
    coroutine in a new Task on every wake-up: once per connection per
    broadcast.  This queue keeps one list, and ``get()`` returns a plain
    Future, which ``wait_for`` awaits as it is, without a Task.  It has the
    methods Engine.IO calls (``put``/``put_nowait``, ``get``/``get_nowait``,
    ``task_done``, ``join``, ``empty``, ``qsize``), with asyncio.Queue's
    meaning; one reader at a time, as Engine.IO uses it.

    Bounded when given a ``limit``: it counts the length of the packets
    waiting (``size``) plus the connection's TCP write buffer (once
    ``transport`` is set), and past the limit it drops what waits, refuses
    any further packet and calls ``overflow(queue, backlog)`` once.  The
    ``None`` Engine.IO queues to stop its writer always gets through.
    """

    __slots__ = ("_done", "_getter", "_items", "_unfinished", "limit", "overflow", "size",
                 "transport", "wake", "writing")

    def __init__(self, limit: int | None = None, overflow=None):
        # A list, not a deque: an idle connection's queue is empty, and an
        # empty deque costs 600 bytes; a busy one holds a few packets.
        self._items: list = []
        self._getter: asyncio.Future | None = None
        self._unfinished = 0
        self._done: asyncio.Future | None = None
        self.size = 0
        self.limit = limit  # None: unbounded; -1: refusing (over the limit)
        self.overflow = overflow
        self.transport = None
        # A writer that runs only while there is something to write
        # (chat.websocket.serve) sets ``wake``, called when an item waits,
        # and raises ``writing`` while it writes; without it, a reader
        # parks in get() as Engine.IO's writer and long-polls do.
        self.wake = None
        self.writing = False

    def qsize(self) -> int:
        return len(self._items)

    def empty(self) -> bool:
        return not self._items

    def put_nowait(self, item) -> None:
        if self.limit == -1 and item is not None:
            return  # over the limit: the connection is being closed
        self._unfinished += 1
        getter = self._getter
        if getter is not None and not getter.done():
            self._getter = None
            getter.set_result(item)
            return
        self._items.append(item)
        if self.wake is not None:
            self.wake()
        if item is None:
            return
        self.size += _length(item)
        if self.limit is not None and self.limit >= 0:
            transport = self.transport
            backlog = self.size + (transport.get_write_buffer_size() if transport else 0)
            if backlog > self.limit:
                self.refuse()
                if self.overflow is not None:
                    self.overflow(self, backlog)

    def refuse(self) -> None:
        """Drop every packet waiting, and refuse any further one."""
        self.limit = -1
        kept = [item for item in self._items if item is None]
        self._unfinished -= len(self._items) - len(kept)
        self._items, self.size = kept, 0
        if self._unfinished == 0 and self._done is not None:
            if not self._done.done():
                self._done.set_result(None)
            self._done = None

    async def put(self, item) -> None:
        self.put_nowait(item)

    def get_nowait(self):
        if not self._items:
            raise asyncio.QueueEmpty
        item = self._items.pop(0)
        if item is not None:
            self.size -= _length(item)
        return item

    def get(self) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        if self._items:
            future.set_result(self.get_nowait())
        else:
            # A getter cancelled by wait_for's timeout is replaced here; an
            # item is never handed to a cancelled future (see put_nowait).
            self._getter = future
        return future

    def reader_waiting(self) -> bool:
        """Nothing waits and nobody is writing: the reader is parked in
        ``get()`` on an empty queue, or the woken writer is not running."""
        if self.wake is not None:
            return not self.writing and not self._items
        return self._getter is not None and not self._getter.done()

    def task_done(self) -> None:
        if self._unfinished <= 0:
            raise ValueError("task_done() called too many times")
        self._unfinished -= 1
        if self._unfinished == 0 and self._done is not None:
            if not self._done.done():
                self._done.set_result(None)
            self._done = None

    async def join(self) -> None:
        if self._unfinished:
            if self._done is None:
                self._done = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._done)


class Writer:
    """Writes what Engine.IO queues for a WebSocket client, in a task that
    runs only while there is something to write.

    Engine.IO keeps a writer task per connection parked on its queue (with
    a ``wait_for``, its timer and its Future): more than a kilobyte of every
    idle connection.  Here the connection's ``SendQueue`` wakes this writer
    when a packet waits and no direct write could take it
    (``UncompressedWebSocket.write`` in ``chat/websocket.py``); the task
    writes until the queue is empty and ends.  A ``None`` in the queue
    closes the WebSocket after what came before it, and so does a failed
    send (nothing more is written; the read loop then ends).
    """

    __slots__ = ("queue", "stopped", "task", "ws")

    def __init__(self, socket, ws) -> None:
        self.queue, self.ws = socket.queue, ws  # a SendQueue (ChatServer's create_queue)
        self.task: asyncio.Task | None = None
        self.stopped = False
        self.queue.wake = self.wake
        if not self.queue.empty():  # Engine.IO's OPEN packet, queued before
            self.wake()

    def wake(self) -> None:
        if not self.stopped and self.task is None:
            self.task = asyncio.ensure_future(self._write())

    async def _write(self) -> None:
        queue = self.queue
        queue.writing = True
        try:
            while not queue.empty():
                pkt = queue.get_nowait()
                queue.task_done()
                if pkt is None:
                    break
                await self.ws.send(pkt.encode())
                pkt = None
            else:
                return
        except Exception:
            pass
        finally:
            queue.writing = False
            self.task = None  # a finished task is still a few hundred bytes
        self.stopped = True
        await self.ws.close()

    async def done(self) -> None:
        """Wait until the writer has written up to the ``None`` queued last."""
        if self.task is not None:
            await self.task


def _length(item) -> int:
    """What a queued Engine.IO packet weighs: the length of its text (its
    bytes for ASCII; a non-ASCII character counts one, though it may take up
    to four), or a small constant for a control packet."""
    data = getattr(item, "data", None)
    return len(data) if isinstance(data, str | bytes) else 16
