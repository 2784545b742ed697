"""Who may connect: origins, and a Redis that wants a password."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest

pytestmark = pytest.mark.slow


def handshake(url: str, origin: str | None) -> int:
    """Status of an Engine.IO polling handshake sent with ``Origin: origin``."""
    request = urllib.request.Request(f"{url}/socket.io/?EIO=4&transport=polling&sticky=o")
    if origin:
        request.add_header("Origin", origin)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_same_origin_only_by_default(shared_clusters):
    cluster = shared_clusters(replicas=3, mode="pubsub")
    assert handshake(cluster.url, cluster.url) == 200  # the page NGINX serves
    assert handshake(cluster.url, None) == 200  # not a browser: no Origin
    assert handshake(cluster.url, "http://evil.example") == 400
    assert handshake(cluster.url, cluster.url.replace("http:", "https:")) == 400


async def test_a_page_from_another_origin_is_refused_over_websocket(shared_clusters, connect):
    import aiohttp

    cluster = shared_clusters(replicas=3, mode="pubsub")
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await session.ws_connect(f"{cluster.url}/socket.io/?EIO=4&transport=websocket",
                                     origin="http://evil.example")
    assert info.value.status == 400


def test_allowed_origins_are_configurable(cluster_factory):
    cluster = cluster_factory(replicas=1, mode="pubsub",
                              env={"CORS_ORIGINS": "https://chat.example, http://localhost:3000"})
    assert handshake(cluster.url, "https://chat.example") == 200
    assert handshake(cluster.url, "http://localhost:3000") == 200
    assert handshake(cluster.url, "http://evil.example") == 400


async def test_redis_with_a_password(cluster_factory, redis_factory, connect, mode):
    redis = redis_factory(password="s3cret-pw")
    url = f"redis://:s3cret-pw@127.0.0.1:{redis.port}/0"
    cluster = cluster_factory(replicas=2, mode=mode, proxy=False, redis_url=url)
    ana = await connect(cluster.replicas[0].url, "ana")
    bia = await connect(cluster.replicas[1].url, "bia")
    assert (await ana.send("behind a password"))["ok"]
    await bia.wait_for(lambda: "behind a password" in bia.texts())


async def test_wrong_redis_password_is_not_ready(cluster_factory, redis_factory, mode):
    import json

    redis = redis_factory(password="right")
    cluster = cluster_factory(replicas=1, mode=mode, proxy=False,
                              redis_url=f"redis://:wrong@127.0.0.1:{redis.port}/0")
    replica = cluster.replicas[0]
    try:
        urllib.request.urlopen(f"{replica.url}/readyz", timeout=5)
        pytest.fail("ready with a wrong password")
    except urllib.error.HTTPError as exc:
        assert exc.code == 503
        assert json.loads(exc.read())["ready"] is False
