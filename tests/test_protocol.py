"""The protocol's rules, checked without a server."""

from __future__ import annotations

import pytest

from chat.protocol import (
    DEFAULT_ROOM,
    ProtocolError,
    TokenBucket,
    chat_message,
    clean_text,
    history_after,
    message_id,
    parse_auth,
    room_of,
    typing_flag,
)


def test_auth_gives_name_and_default_room():
    assert parse_auth({"name": "  ana "}) == ("ana", DEFAULT_ROOM, None)
    assert parse_auth({"name": "ana", "room": "ops"}) == ("ana", "ops", None)


def test_auth_may_carry_a_position_to_resume_from():
    auth = {"name": "ana", "resume": {"epoch": "1f2e3d4c", "seq": 41}}
    assert parse_auth(auth) == ("ana", DEFAULT_ROOM, ("1f2e3d4c", 41))


@pytest.mark.parametrize("resume", [
    "41", 41, [], {}, {"epoch": "e"}, {"seq": 1}, {"epoch": "", "seq": 1},
    {"epoch": "e" * 33, "seq": 1}, {"epoch": 5, "seq": 1}, {"epoch": "e", "seq": -1},
    {"epoch": "e", "seq": 1.5}, {"epoch": "e", "seq": True}, {"epoch": "e", "seq": 2**53},
])
def test_a_bad_resume_position_is_refused_with_a_reason(resume):
    with pytest.raises(ProtocolError, match="resume"):
        parse_auth({"name": "ana", "resume": resume})


def test_positions_at_their_edges():
    """Numbers up to 2**53 - 1 (what a JavaScript client can hold) and
    epochs of up to 32 characters are accepted; one more is refused."""
    top = 2**53 - 1
    assert parse_auth({"name": "a", "resume": {"epoch": "e" * 32, "seq": top}})[2] == (
        "e" * 32, top)
    assert history_after({"after": top}) == top
    for resume in ({"epoch": "e" * 33, "seq": 1}, {"epoch": "e", "seq": top + 1}):
        with pytest.raises(ProtocolError, match="resume"):
            parse_auth({"name": "a", "resume": resume})
    with pytest.raises(ProtocolError, match="history"):
        history_after({"after": top + 1})


def test_history_requests_name_a_position():
    assert history_after({"after": 0}) == 0
    assert history_after({"after": 12, "epoch": "x"}) == 12
    for payload in (None, {}, {"after": -1}, {"after": "3"}, {"after": True}, [3]):
        with pytest.raises(ProtocolError):
            history_after(payload)


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
    for payload in ({}, None, 3, {"room": ""}, "b"):
        with pytest.raises(ProtocolError):
            room_of(payload)


def test_message_ids_come_from_the_client_or_are_new():
    assert message_id({"text": "t", "id": "abc-DEF_1234"}) == "abc-DEF_1234"
    assert message_id({"text": "t"}) != message_id({"text": "t"})
    assert len(message_id({"text": "t"})) == 32
    for bad in ("short", "x" * 65, "has space1", "naïve-id-1", 12345678, ["abcdefgh"], ""):
        with pytest.raises(ProtocolError, match="message id"):
            message_id({"text": "t", "id": bad})
    a = chat_message(room="r", name="n", text="t", server="s", id="abcdefgh")
    assert a["id"] == "abcdefgh"
    assert set(a) == {"id", "room", "name", "text", "server", "ts"}


def test_token_bucket_allows_burst_then_rate():
    bucket = TokenBucket(rate=2, burst=3)
    start = bucket.stamp
    assert [bucket.take(start) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(start + 0.5)  # one token back after 1/rate s
    assert not bucket.take(start + 0.5)


def test_typing_takes_a_boolean_only():
    assert typing_flag({"typing": True}) is True
    assert typing_flag({"typing": False}) is False
    for payload in ({"typing": "yes"}, {"typing": None}, {"typing": 1}, {}, None, "x",
                    {"typing": {}}):
        with pytest.raises(ProtocolError, match="typing needs"):
            typing_flag(payload)


def test_message_text_refuses_control_characters_but_keeps_line_breaks():
    assert clean_text({"text": "two\nlines\twith a tab\r\n"}, 100) == "two\nlines\twith a tab"
    for bad in ("nul\x00here", "bell\x07", "esc\x1b[31m", "del\x7f here", "c1\x85 inside"):
        with pytest.raises(ProtocolError, match="control characters"):
            clean_text({"text": bad}, 100)
