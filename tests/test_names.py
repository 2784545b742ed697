"""Open mode: names normalized (NFKC), compared as they look (confusables
folded), and no two live people in one room with names that look the same,
across replica processes."""

from __future__ import annotations

import asyncio
import secrets

import pytest
import socketio

from chat.names import fold, normalize
from chat.protocol import ProtocolError

CYRILLIC_ANA = "\u0430na"  # the first letter is CYRILLIC SMALL LETTER A
FULLWIDTH_ANA = "\uff41\uff4e\uff41"


@pytest.mark.parametrize(("name", "shown", "folded"), [
    ("ana", "ana", "ana"),
    (CYRILLIC_ANA, CYRILLIC_ANA, "ana"),
    (FULLWIDTH_ANA, "ana", "ana"),
    ("ANA", "ANA", "ana"),
    ("\u03c1aypal", "\u03c1aypal", "paypal"),  # Greek rho
    ("Il1|", "Il1|", "llll"),
    ("\ufb03", "ffi", "ffi"),  # a ligature, spelled out by NFKC
])
def test_names_are_normalized_and_folded(name, shown, folded):
    assert normalize(name) == (shown, folded)


@pytest.mark.parametrize("blank", ["\u3164", "\u3164\u3164", "\u2800", "\u115f\u1160"])
def test_names_that_render_blank_are_refused(blank):
    with pytest.raises(ProtocolError, match="no visible character"):
        normalize(blank)


def test_different_names_stay_different():
    assert len({fold(n) for n in ("ana", "ane", "bia", "joão", "joao", "ana2")}) == 6


@pytest.fixture
def pair(shared_clusters):
    return shared_clusters(replicas=2, mode="pubsub", proxy=False).replicas


async def refused(url: str, auth: dict) -> str:
    from conftest import ChatClient

    client = ChatClient("refused")
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.sio.connect(url, auth=auth, transports=["websocket"], wait_timeout=5)
    return client.refusal["message"]


@pytest.mark.slow
async def test_confusable_names_are_refused_while_their_holder_is_live(pair, connect):
    one, two = pair
    room = f"names-{secrets.token_hex(3)}"
    ana = await connect(one.url, "ana", room=room)
    for name in (CYRILLIC_ANA, FULLWIDTH_ANA, "ANA", " ana "):
        reason = await refused(two.url, {"name": name, "room": room,
                                         "key": secrets.token_hex(16)})
        assert reason.startswith("name ") and "is taken in" in reason, reason
        assert "'ana' is there and looks the same" in reason
    # A second tab of ana (her key): the same person, not an impostor.
    tab = await connect(two.url, "ana", room=room, auth={"name": "ana", "room": room,
                                                       "key": ana.key})
    answer = await tab.sio.call("presence", {}, timeout=5)
    assert (answer["count"], answer["connections"]) == (1, 2)
    assert tab.welcome["id"] == ana.welcome["id"]
    # Elsewhere the name is free, and once ana has gone it is free here too.
    elsewhere = await connect(two.url, CYRILLIC_ANA, room=f"{room}-b")
    assert elsewhere.welcome["name"] == CYRILLIC_ANA
    reason = await refused(two.url, {"name": "\u3164", "room": room})
    assert "no visible character" in reason
    # Moving into the room under a look-alike name is refused, and changes nothing.
    ack = await elsewhere.sio.call("join", {"room": room}, timeout=5)
    assert ack["ok"] is False and "is taken in" in ack["error"]
    assert ack["error"].endswith(f"you are still in '{room}-b'")
    await ana.sio.disconnect()
    await tab.sio.disconnect()
    for _ in range(25):  # until the replicas have seen both tabs go
        if (await elsewhere.sio.call("join", {"room": room}, timeout=5))["ok"]:
            break
        await asyncio.sleep(0.2)
    assert elsewhere.welcome["room"] == room
