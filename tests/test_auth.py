"""Signed identities: each bad token is refused with its own reason, in
process for HS256, RS256 and ES256 keys, and against replica processes that
hold the key: HS256 from AUTH_JWT_SECRET, RS256 from an AUTH_JWT_PUBLIC_KEY
PEM file (ES256 keys only in process: the key's type picks the algorithm,
nothing else differs).  The name, the user id and the rooms a connection
gets come from the token alone."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import urllib.request

import jwt
import pytest
import socketio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from chat.auth import AuthRefused, Identities
from chat.settings import SettingsError, load_settings

pytestmark = pytest.mark.slow
SECRET = "s3cret-for-tests-only-0123456789abcdef"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem(private) -> str:
    return private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def claims(**extra) -> dict:
    return {"sub": "user-42", "name": "Ana Lima", "exp": int(time.time()) + 300, **extra}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made(header: dict, payload: dict, key: bytes | None) -> str:
    """A token PyJWT would refuse to make: unsigned, or HMAC-signed with a PEM."""
    head = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    signature = hmac.new(key, head.encode(), hashlib.sha256).digest() if key else b""
    return f"{head}.{b64(signature)}"


def tampered(token: str, **changes) -> str:
    head, body, signature = token.split(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    return ".".join((head, b64(json.dumps({**payload, **changes}).encode()), signature))


HS = Identities(secret=SECRET)
RS = Identities(public_key=pem(RSA_KEY))


@pytest.mark.parametrize(("verifier", "token", "reason"), [
    (HS, None, "a token is required"),
    (HS, "not.a.jwt", "malformed"),
    (HS, jwt.encode(claims(exp=int(time.time()) - 5), SECRET), "expired"),
    (HS, jwt.encode(claims(), "another-secret-of-enough-length-000000"), "bad signature"),
    (HS, tampered(jwt.encode(claims(), SECRET), sub="admin"), "bad signature"),
    (HS, tampered(jwt.encode(claims(rooms=["a"]), SECRET), rooms=["a", "b"]), "bad signature"),
    (HS, hand_made({"alg": "none", "typ": "JWT"}, claims(), None), "alg none"),
    (HS, hand_made({"alg": "NONE"}, claims(), None), "alg none"),
    (HS, jwt.encode(claims(), RSA_KEY, algorithm="RS256"), "algorithm confusion"),
    # The classic: HMAC-signed with the server's own public key as the secret.
    (RS, hand_made({"alg": "HS256"}, claims(), pem(RSA_KEY).encode()), "algorithm confusion"),
    (RS, jwt.encode(claims(), EC_KEY, algorithm="ES256"), "'ES256' is not accepted"),
    (HS, jwt.encode({"sub": "u", "name": "n"}, SECRET), "no exp claim"),
    (HS, jwt.encode({"name": "n", "exp": int(time.time()) + 60}, SECRET), "no sub claim"),
    (HS, jwt.encode(claims(name="bell\x07"), SECRET), "name claim"),
    (HS, jwt.encode(claims(rooms="general"), SECRET), "rooms must be a list"),
    (HS, jwt.encode(claims(nbf=int(time.time()) + 600), SECRET), "not valid yet"),
])
def test_each_bad_token_is_refused_with_its_reason(verifier, token, reason):
    with pytest.raises(AuthRefused) as refused:
        verifier.identify({"token": token, "name": "ignored"})
    assert reason in str(refused.value)


def test_a_valid_token_names_the_user_and_limits_the_rooms():
    who = HS.identify({"token": jwt.encode(claims(rooms=["ops", "general"]), SECRET),
                       "name": "somebody else"})
    assert (who.user, who.name, who.rooms) == ("user-42", "Ana Lima",
                                               frozenset({"ops", "general"}))
    who.may_enter("ops")
    with pytest.raises(AuthRefused, match="not allowed by your token"):
        who.may_enter("random")
    es = Identities(public_key=pem(EC_KEY))
    assert es.algorithm == "ES256"
    assert es.identify({"token": jwt.encode(claims(), EC_KEY, algorithm="ES256")}).rooms is None


def test_key_settings_refuse_in_one_line(tmp_path):
    (tmp_path / "key.pem").write_text(pem(RSA_KEY))
    (tmp_path / "bad.pem").write_text("not a key")
    assert load_settings({"AUTH_JWT_PUBLIC_KEY": str(tmp_path / "key.pem")}).open_mode is False
    for env, what in [({"AUTH_JWT_SECRET": "short"}, "at least 32 bytes"),
                      ({"AUTH_JWT_PUBLIC_KEY": str(tmp_path / "bad.pem")}, "PEM"),
                      ({"AUTH_JWT_PUBLIC_KEY": str(tmp_path / "none.pem")}, "cannot be read"),
                      ({"AUTH_JWT_SECRET": SECRET,
                        "AUTH_JWT_PUBLIC_KEY": str(tmp_path / "key.pem")}, "both set")]:
        with pytest.raises(SettingsError, match=what) as refused:
            load_settings(env)
        assert "\n" not in str(refused.value) and SECRET not in str(refused.value)


# -- against replica processes ------------------------------------------------

@pytest.fixture
def signed(shared_clusters):
    """Two replicas (no proxy) that accept HS256 tokens only."""
    return shared_clusters(replicas=2, mode="pubsub", proxy=False,
                           env={"AUTH_JWT_SECRET": SECRET})


@pytest.fixture(scope="module")
def rs_signed(shared_clusters, tmp_path_factory):
    """One replica that verifies RS256 tokens with a public key from a PEM file."""
    key_file = tmp_path_factory.mktemp("keys") / "public.pem"
    key_file.write_text(pem(RSA_KEY))
    return shared_clusters(replicas=1, mode="pubsub", proxy=False,
                           env={"AUTH_JWT_PUBLIC_KEY": str(key_file)})


def health(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/healthz", timeout=5) as response:
        return json.loads(response.read())


async def refusal(url: str, auth) -> str:
    from conftest import ChatClient

    client = ChatClient("refused")
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.sio.connect(url, auth=auth, transports=["websocket"], wait_timeout=5)
    return client.refusal["message"]


async def test_replicas_refuse_bad_tokens_with_distinct_reasons(signed):
    url = signed.replicas[0].url
    assert health(url)["auth"] == "HS256"
    log = (signed.logs / "replica-1.log").read_text()
    assert "identities: signed identities (HS256 tokens required)" in log
    reasons = [await refusal(url, auth) for auth in (
        {"name": "ana"},
        {"token": jwt.encode(claims(exp=int(time.time()) - 5), SECRET)},
        {"token": jwt.encode(claims(), "another-secret-of-enough-length-000000")},
        {"token": hand_made({"alg": "none"}, claims(), None)},
        {"token": jwt.encode(claims(), RSA_KEY, algorithm="RS256")},
        {"token": tampered(jwt.encode(claims(), SECRET), name="Admin")},
        {"token": jwt.encode(claims(rooms=["ops"]), SECRET), "room": "general"},
    )]
    assert [r.split(":")[0] for r in reasons] == [
        "a token is required (auth.token)", "token refused", "token refused", "token refused",
        "token refused", "token refused",
        "room 'general' is not allowed by your token (rooms claim)"]
    assert len(set(reasons)) == 6, reasons  # wrong key and tampered: both a bad signature
    assert health(url)["clients"] == 0


async def test_the_token_decides_name_user_and_rooms(signed, connect):
    one, two = signed.replicas
    token = jwt.encode(claims(rooms=["ops", "deploys"]), SECRET)
    tab1 = await connect(one.url, "x", auth={"token": token, "name": "Mallory", "room": "ops"})
    tab2 = await connect(two.url, "x", auth={"token": token, "room": "ops"})
    bia = await connect(one.url, "x", auth={
        "token": jwt.encode(claims(sub="user-7", name="Bia"), SECRET), "room": "ops"})
    assert (tab1.welcome["name"], tab1.welcome["id"]) == ("Ana Lima", "user-42")
    # Two tabs of one user: one person, two connections, on any replica.
    answer = await bia.sio.call("presence", {}, timeout=5)
    assert answer["presence"] == [{"id": "user-42", "name": "Ana Lima"},
                                  {"id": "user-7", "name": "Bia"}]
    assert (answer["count"], answer["connections"]) == (2, 3)
    assert (await tab2.send("from the second tab"))["ok"]
    await bia.wait_for(lambda: bia.messages and bia.messages[-1]["name"] == "Ana Lima")
    # The rooms claim holds for joins too, and a refused join changes nothing.
    ack = await tab1.sio.call("join", {"room": "random"}, timeout=5)
    assert ack == {"ok": False,
                   "error": "room 'random' is not allowed by your token (rooms claim)"}
    assert (await tab1.sio.call("join", {"room": "deploys"}, timeout=5))["ok"]
    # One tab left: still one person in ops, with one connection.
    await bia.wait_for(lambda: any(e.get("connections") == 2 for e in bia.presence))
    assert not any(p["id"] == "user-42" for e in bia.presence for p in e["left"])
    await tab2.sio.disconnect()
    await bia.wait_for(lambda: bia.saw("left", "Ana Lima"))


async def test_a_replica_with_a_public_key_file_verifies_rs256_tokens(rs_signed, connect):
    url = rs_signed.replicas[0].url
    assert health(url)["auth"] == "RS256"
    log = (rs_signed.logs / "replica-1.log").read_text()
    assert "identities: signed identities (RS256 tokens required)" in log
    reasons = [await refusal(url, {"token": token}) for token in (
        # HMAC-signed with the replica's own public key (the PEM text) as the secret.
        hand_made({"alg": "HS256", "typ": "JWT"}, claims(), pem(RSA_KEY).encode()),
        jwt.encode(claims(exp=int(time.time()) - 5), RSA_KEY, algorithm="RS256"),
        jwt.encode(claims(), OTHER_RSA_KEY, algorithm="RS256"),
    )]
    assert reasons == [
        "token refused: algorithm confusion (HS256 token; this chat verifies RS256 only)",
        "token refused: expired (exp is past)",
        "token refused: bad signature (signed with another key, or altered)"]
    token = jwt.encode(claims(sub="user-9", name="Caio"), RSA_KEY, algorithm="RS256")
    caio = await connect(url, "x", auth={"token": token, "name": "Mallory"})
    assert (caio.welcome["name"], caio.welcome["id"]) == ("Caio", "user-9")
