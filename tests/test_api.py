"""The HTTP API through NGINX, against three replica processes and Redis:
a post reaches socket clients on every replica, numbered like theirs; an
idempotent retry delivers once, on the replica that answered first or on
another; refusals are JSON with their status, and so is a bug of ours."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import urllib.error
import urllib.request

import pytest
from aiohttp.test_utils import TestClient, TestServer

from chat.app import create_app
from chat.appkeys import NAMESPACE
from chat.settings import Settings

KEY = "api-key-for-tests-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}


def call(url: str, method: str = "GET", body=None, headers: dict | None = None,
         raw: bytes | None = None) -> tuple[int, dict, dict]:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json",
                                              **AUTH, **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), dict(exc.headers)


async def acall(*args, **kwargs):
    return await asyncio.to_thread(call, *args, **kwargs)


@pytest.fixture
def trio(shared_clusters):
    return shared_clusters(replicas=3, mode="pubsub",
                           env={"API_KEYS": f"{KEY},other-key-0123456789"})


@pytest.mark.slow
@pytest.mark.cluster
async def test_a_post_reaches_every_replica_once_even_when_retried(trio, connect):
    room = f"api-{secrets.token_hex(3)}"
    clients = [await connect(r.url, f"c{i}", room=room) for i, r in enumerate(trio.replicas)]
    assert (await clients[0].send("from a socket"))["ok"]
    url = f"{trio.url}/api/rooms/{room}/messages"
    key = {"Idempotency-Key": "deploy-4711"}
    first = await acall(url, "POST", {"name": "deploy-bot", "text": "deploy finished"}, key)
    assert first[:2] == (201, {"room": room, "id": first[1]["id"], "seq": 2})
    again = await acall(url, "POST", {"name": "deploy-bot", "text": "deploy finished"}, key)
    assert again[:2] == first[:2] and again[2]["Idempotent-Replayed"] == "true"
    other = await acall(url, "POST", {"name": "deploy-bot", "text": "something else"}, key)
    assert other[0] == 400 and "used for another request" in other[1]["error"]
    # A barrier after the retry: once it is in, a second copy would be too.
    barrier = await acall(url, "POST", {"name": "deploy-bot", "text": "barrier"},
                          {"Idempotency-Key": "barrier-1"})
    assert barrier[1]["seq"] == 3
    for client in clients:
        await client.wait_for(lambda c=client: "barrier" in c.texts())
        assert client.texts() == ["from a socket", "deploy finished", "barrier"]
        assert client.seqs() == [1, 2, 3]
        assert client.messages[1]["name"] == "deploy-bot"
    status, history, _ = await acall(f"{url}?after=1&limit=1")
    assert status == 200 and [m["text"] for m in history["messages"]] == ["deploy finished"]
    status, presence, _ = await acall(f"{trio.url}/api/rooms/{room}/presence")
    assert (status, presence["count"], presence["connections"]) == (200, 3, 3)
    status, rooms, _ = await acall(f"{trio.url}/api/rooms?limit=1000")
    assert {"room": room, "people": 3} in rooms["rooms"]


@pytest.mark.slow
@pytest.mark.cluster
async def test_a_retry_on_another_replica_gets_the_first_answer(cluster_factory, connect):
    """Posted on replica A, retried on replica B once the room's log has moved
    past the message (HISTORY_LENGTH=2): the message's id is no longer in the
    log, so only the answer A kept where B can read it (Redis) tells B that
    this was posted already.  With an answer store in each replica's memory B
    would post it a second time."""
    duo = cluster_factory(replicas=2, mode="pubsub", proxy=False,
                          env={"API_KEYS": KEY, "HISTORY_LENGTH": "2", "HISTORY_ON_JOIN": "0"})
    one, two = duo.replicas
    room = f"api-{secrets.token_hex(3)}"
    clients = [await connect(r.url, f"c{i}", room=room) for i, r in enumerate(duo.replicas)]
    assert clients[0].server != clients[1].server
    post, key = {"name": "deploy-bot", "text": "deploy finished"}, {"Idempotency-Key": "d-7"}
    first = await acall(f"{one.url}/api/rooms/{room}/messages", "POST", post, key)
    assert first[:2] == (201, {"room": room, "id": first[1]["id"], "seq": 1})
    assert "Idempotent-Replayed" not in first[2]
    for text in ("second", "third"):
        assert (await clients[0].send(text))["ok"]
    again = await acall(f"{two.url}/api/rooms/{room}/messages", "POST", post, key)
    assert again[:2] == first[:2] and again[2].get("Idempotent-Replayed") == "true", again
    # A barrier after the retry: once it is in, a second copy would be too.
    barrier = await acall(f"{two.url}/api/rooms/{room}/messages", "POST",
                          {"name": "deploy-bot", "text": "barrier"}, {"Idempotency-Key": "b-1"})
    assert barrier[:2] == (201, {"room": room, "id": barrier[1]["id"], "seq": 4})
    for client in clients:
        await client.wait_for(lambda c=client: "barrier" in c.texts())
        assert client.texts() == ["deploy finished", "second", "third", "barrier"]
        assert client.seqs() == [1, 2, 3, 4]


@pytest.mark.slow
@pytest.mark.cluster
@pytest.mark.parametrize(("path", "method", "body", "headers", "status", "error"), [
    ("rooms", "GET", None, {"Authorization": "Bearer wrong-key-0123456789"}, 401,
     "unknown API key"),
    ("rooms", "GET", None, {"Authorization": ""}, 401, "an API key is required"),
    ("rooms/general/messages", "POST", {"name": "bot", "text": "x" * 2001},
     {"Idempotency-Key": "k1"}, 413, "longer than 2000 characters"),
    ("rooms/general/messages", "POST", {"name": "bot", "text": "hi"}, {}, 400,
     "Idempotency-Key header is required"),
    ("rooms/general/messages", "POST", {"name": "", "text": "hi"},
     {"Idempotency-Key": "k2"}, 400, "name must be"),
    ("rooms/abcdefghij0123456789/messages", "GET", None, {}, 403, "reserved"),
    ("rooms/general/messages?limit=0", "GET", None, {}, 400, "limit must be"),
    ("nothing/here", "GET", None, {}, 404, "no such API"),
])
def test_refusals_are_json_with_their_status(trio, path, method, body, headers, status, error):
    got, answer, _ = call(f"{trio.url}/api/{path}", method, body, headers)
    assert (got, error in answer["error"]) == (status, True), answer


@pytest.mark.slow
@pytest.mark.cluster
def test_a_body_too_large_for_nginx_is_a_json_413(trio):
    got, answer, _ = call(f"{trio.url}/api/rooms/general/messages", "POST",
                          raw=b"{" + b" " * 70_000 + b"}", headers={"Idempotency-Key": "big"})
    assert got == 413 and "larger than" in answer["error"]


@pytest.mark.slow
@pytest.mark.cluster
def test_with_redis_down_the_api_answers_503(cluster_factory):
    cluster = cluster_factory(replicas=1, mode="pubsub", env={"API_KEYS": KEY})
    url = f"{cluster.url}/api/rooms/general"
    assert call(f"{url}/messages", "POST", {"name": "bot", "text": "before"},
                {"Idempotency-Key": "r1"})[0] == 201
    cluster.stop_redis()
    try:
        for got in (call(f"{url}/messages", "POST", {"name": "bot", "text": "during"},
                         {"Idempotency-Key": "r2"}),
                    call(f"{url}/messages"), call(f"{url}/presence"),
                    call(f"{cluster.url}/api/rooms")):
            assert got[0] == 503 and "Redis" in got[1]["error"], got
    finally:
        cluster.start_redis()


async def test_each_key_has_its_rate_limit():
    app = create_app(Settings(api_keys=(KEY, "other-key-0123456789"), api_rate=0.1,
                              api_burst=3, server_id="t"))
    async with TestClient(TestServer(app)) as client:
        statuses = [(await client.get("/api/rooms", headers=AUTH)).status for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        refused = await client.get("/api/rooms", headers=AUTH)
        assert refused.headers["Retry-After"] == "10"
        assert (await refused.json())["error"].startswith("rate limit")
        other = await client.get("/api/rooms",
                                 headers={"Authorization": "Bearer other-key-0123456789"})
        assert other.status == 200


async def test_the_api_is_off_without_keys():
    async with TestClient(TestServer(create_app(Settings(server_id="t")))) as client:
        refused = await client.get("/api/rooms", headers=AUTH)
        assert refused.status == 403 and "API_KEYS" in (await refused.json())["error"]


async def test_a_bug_is_a_json_500_with_its_traceback_in_the_log_only(caplog):
    app = create_app(Settings(api_keys=(KEY,), server_id="t"))

    async def broken(limit):
        raise RuntimeError("detail-for-the-log-only")

    app[NAMESPACE].presence.rooms = broken
    async with TestClient(TestServer(app)) as client:
        with caplog.at_level(logging.ERROR, logger="chat.api"):
            failed = await client.get("/api/rooms", headers=AUTH)
            assert failed.status == 500
            assert failed.content_type == "application/json"
            assert await failed.json() == {"error": "internal error"}
    (record,) = [r for r in caplog.records if r.name == "chat.api"]
    assert record.getMessage() == "api: GET /api/rooms failed: internal error"
    assert "detail-for-the-log-only" in str(record.exc_info[1])
