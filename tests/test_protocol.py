"""The protocol's rules, checked without a server."""

from __future__ import annotations

import pytest

from chat.protocol import (
    DEFAULT_ROOM,
    ProtocolError,
    TokenBucket,
    chat_message,
    clean_text,
    parse_auth,
    room_of,
)


def test_auth_gives_name_and_default_room():
    assert parse_auth({"name": "  ana "}) == ("ana", DEFAULT_ROOM)
    assert parse_auth({"name": "ana", "room": "ops"}) == ("ana", "ops")


@pytest.mark.parametrize("auth", [
    None, "ana", [], {}, {"name": ""}, {"name": "   "}, {"name": "x" * 33}, {"name": 7},
    {"name": "a\nb"}, {"name": "ana", "room": 5}, {"name": "ana", "room": ""},
    {"name": "ana", "room": "r" * 33},
])
def test_bad_auth_is_refused_with_a_reason(auth):
    with pytest.raises(ProtocolError) as info:
        parse_auth(auth)
    assert str(info.value)


def test_text_is_trimmed_and_bounded():
    assert clean_text({"text": "  hi  "}, 10) == "hi"
    assert clean_text({"text": "x" * 10}, 10) == "x" * 10
    for payload in ({"text": "x" * 11}, {"text": "   "}, {"text": 3}, {}, "hi", None, [1]):
        with pytest.raises(ProtocolError):
            clean_text(payload, 10)


def test_join_payload():
    assert room_of({"room": "b"}) == "b"
    assert room_of("b") == "b"
    for payload in ({}, None, 3, {"room": ""}):
        with pytest.raises(ProtocolError):
            room_of(payload)


def test_messages_have_unique_ids():
    a = chat_message(room="r", name="n", text="t", server="s")
    b = chat_message(room="r", name="n", text="t", server="s")
    assert a["id"] != b["id"]
    assert set(a) == {"id", "room", "name", "text", "server", "ts"}


def test_token_bucket_allows_burst_then_rate():
    bucket = TokenBucket(rate=2, burst=3)
    start = bucket.stamp
    assert [bucket.take(start) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(start + 0.5)  # one token back after 1/rate s
    assert not bucket.take(start + 0.5)
