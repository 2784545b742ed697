"""Fewer layers between a chat message and Redis.

Every chat message costs its replica one Redis command (the append script,
``history.py``), and redis-py 8 wraps each command in several layers that
cost more CPU than the round trip itself on a busy replica: a retry wrapper
and its closures, observability hooks awaited even when off, a reply
callback lookup, and, when the connection has a socket timeout, a new task
and a timer for every write (``asyncio.wait_for`` around the write, though
a write to a socket that is not backed up never waits).  The append script
against a local Redis, five rounds of 4,000 calls on the 2-vCPU benchmark
machine: 136 to 185 µs of user CPU per call through redis-py's
``Script.__call__``, 103 to 120 µs by the path here.

Two pieces, both falling back to redis-py's own path whenever they are not
sure:

* :class:`QuickSend`, mixed into the connection class of every
  :class:`~chat.redis_clients.BoundedPool`: a command whose connection is
  open and whose socket buffer is empty is written at once, without the
  task and timer.  A backed-up or closing connection takes redis-py's write,
  with its timeout.
* :func:`hmget_many`: the same fields of many hashes (the Sequencer's
  catch-up reads every room's head each second) in one script call on one
  Redis, where a pipeline costs redis-py a pack, a parse and a timed read
  per command.

* :func:`evalsha`: a script on one Redis (or a Sentinel-watched master)
  run on a pooled connection directly: take a connection, send, read,
  give it back.  The same connection methods raise the same errors as
  before (a failure to connect says so, ``history.never_connected``), a
  connection that fails mid-command is closed by them, and a Redis that
  does not know the script yet gets it loaded, as redis-py's ``Script``
  does.  No command is ever sent twice, except the script after NOSCRIPT,
  which Redis refused without running it.  A Redis Cluster client takes
  ``Script.__call__``.
"""

from __future__ import annotations

from redis._parsers.encoders import Encoder
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError


class QuickSend:
    """Connection mixin: write a command at once when nothing can be lost
    by skipping redis-py's timed write (see the module's docstring)."""

    async def send_packed_command(self, command, check_health: bool = True) -> None:
        writer = getattr(self, "_writer", None)
        transport = getattr(writer, "transport", None)
        if (transport is None or not isinstance(command, list) or not self.is_connected
                or (check_health and self.health_check_interval)
                or transport.is_closing() or transport.get_write_buffer_size()):
            await super().send_packed_command(command, check_health)
            return
        try:
            writer.writelines(command)  # an open socket with room: this does not wait
        except BaseException as exc:
            await self.disconnect(nowait=True)
            if isinstance(exc, OSError):
                raise RedisConnectionError(f"Error writing to Redis: {exc}") from exc
            raise


_quick_classes: dict[type, type] = {}


def quick(connection_class: type) -> type:
    """``connection_class`` with :class:`QuickSend` in front (made once)."""
    if issubclass(connection_class, QuickSend):
        return connection_class
    made = _quick_classes.get(connection_class)
    if made is None:
        made = type(f"Quick{connection_class.__name__}", (QuickSend, connection_class), {})
        _quick_classes[connection_class] = made
    return made


async def evalsha(client, script, keys: list, args: list):
    """Run redis-py's ``script`` (``client.register_script``) with ``keys``
    and ``args``, on a pooled connection of ``client`` directly when its
    pool is one of ours (its connections are :class:`QuickSend`; see the
    module's docstring)."""
    pool = getattr(client, "connection_pool", None)
    if (not issubclass(getattr(pool, "connection_class", object), QuickSend)
            or getattr(client, "connection", None) is not None):
        return await script(keys=keys, args=args)
    try:
        return await _evalsha(pool, script.sha, keys, args)
    except NoScriptError:  # refused unrun: a restarted Redis, a promoted replica
        script.sha = await client.script_load(script.script)
    return await _evalsha(pool, script.sha, keys, args)


async def _evalsha(pool, sha: str, keys: list, args: list):
    connection = await pool.get_connection()
    try:
        command = ("EVALSHA", sha, len(keys), *keys, *args)
        packed = resp(command) if pool.encoder_class is Encoder else None
        await connection.send_packed_command(packed or connection.pack_command(*command))
        return await connection.read_response()
    finally:
        await pool.release(connection)


def resp(args) -> list[bytes] | None:
    """A command in the Redis protocol, as redis-py's ``pack_command`` would
    write it for text and integer arguments (UTF-8, as its encoder's
    default); None for anything else, which redis-py then packs (or
    refuses).  Its version handles every type and splits on buffer sizes,
    at a dozen calls per argument; an append has eleven arguments."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        kind = type(arg)
        if kind is str:
            data = arg.encode()
        elif kind is int:
            data = b"%d" % arg
        elif kind is bytes:
            data = arg
        else:
            return None
        parts += (b"$%d\r\n" % len(data), data, b"\r\n")
    return [b"".join(parts)]


# KEYS: hashes; ARGV: fields.  Returns every hash's fields, one after the other.
HMGET_MANY = """
local out, n = {}, #ARGV
for i, key in ipairs(KEYS) do
  local values = redis.call('HMGET', key, unpack(ARGV))
  for j = 1, n do out[(i - 1) * n + j] = values[j] end
end
return out
"""
MANY = 500  # hashes per script call (each call holds Redis for its duration)


async def hmget_many(client, script, keys: list[str], fields: list[str]) -> list[list]:
    """``HMGET key *fields`` for each of ``keys``: ``script`` (the client's
    registered :data:`HMGET_MANY`) once per ``MANY`` keys on one Redis; a
    pipeline on a Cluster, whose keys need not share a slot."""
    if isinstance(client, RedisCluster):
        async with client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hmget(key, *fields)
            return await pipe.execute()
    answers: list[list] = []
    for start in range(0, len(keys), MANY):
        flat = await evalsha(client, script, keys[start:start + MANY], fields)
        answers += [flat[i:i + len(fields)] for i in range(0, len(flat), len(fields))]
    return answers
