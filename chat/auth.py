"""Who is connecting: a signed identity (a JWT), or open mode.

With ``AUTH_JWT_SECRET`` (HS256) or ``AUTH_JWT_PUBLIC_KEY`` (RS256 or ES256,
by the key's type) set, a connection must carry ``auth.token``, a JWT that
the product's own backend signed.  :meth:`Identities.identify` checks it in
this order, and each refusal says which check failed:

1. there is a token, and it is at most ``MAX_TOKEN`` characters;
2. its header parses, and names an algorithm;
3. the algorithm is not ``none`` (an unsigned token);
4. the algorithm is the one the key is for: a token signed with HS256 while
   the chat holds an RSA public key is *algorithm confusion* (the attacker
   signs with the public key as an HMAC secret), refused before any
   verification; PyJWT would refuse it too, but as a vague key error;
5. the signature verifies (a wrong key and altered claims both fail here);
6. ``exp`` is there and not past, ``nbf`` not ahead;
7. ``sub`` (the user id) and ``name`` (the display name) are there and valid,
   and ``rooms``, when present, is a list of room names.

The identity's ``rooms`` (None: any room) is checked again at every join
(``events.py``).  The client's own ``auth.name`` is ignored.

Without either setting the chat is in open mode: the client names itself
(``names.py`` normalizes and folds the name), and a client may send
``auth.key``, a random string of its own that stays the same across its
tabs and reconnections: connections with one key and one name are one
person.  The key is never shown; presence shows a hash of it and the name.
A connection without a key is a person of its own.
"""

from __future__ import annotations

import dataclasses
import hashlib
import secrets

import jwt

from .names import normalize
from .protocol import MAX_ROOM_LENGTH, ProtocolError, clean_name, clean_room

MAX_TOKEN = 8192  # characters; a token is a header field's worth at most
MAX_ALLOWED_ROOMS = 100
MAX_SUB = 128
HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
OPEN_KEY_LENGTH = (16, 128)


class BadKey(ValueError):
    """``AUTH_JWT_PUBLIC_KEY`` holds no key the chat can verify with."""


def key_algorithm(pem: str) -> str:
    """The algorithm a PEM public key verifies: RS256 (RSA) or ES256 (P-256)."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(pem.encode())
    except (ValueError, TypeError) as exc:
        raise BadKey(f"not a PEM public key: {exc}") from None
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise BadKey(f"an RSA key of {key.key_size} bits is too short (2048 at least)")
        return "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return "ES256"
    raise BadKey("neither an RSA key nor an EC key on the P-256 curve")


class AuthRefused(ProtocolError):
    """A connection's identity was refused; the message says why."""


@dataclasses.dataclass(frozen=True, slots=True)
class Identity:
    user: str  # the id presence shows: the token's sub, or a hash of the open-mode key
    name: str
    fold: str | None  # open mode: what the name looks like (names.py); else None
    rooms: frozenset[str] | None  # where it may go; None: anywhere

    def may_enter(self, room: str) -> None:
        if self.rooms is not None and room not in self.rooms:
            raise AuthRefused(f"room {room!r} is not allowed by your token (rooms claim)")


class Identities:
    """Turns a connection's ``auth`` into an :class:`Identity`, or refuses it."""

    def __init__(self, *, secret: str | None = None, public_key: str | None = None):
        self.algorithm: str | None = None
        self.key = None
        if secret:
            self.algorithm, self.key = "HS256", secret
        elif public_key:
            from cryptography.hazmat.primitives.serialization import load_pem_public_key

            self.algorithm = key_algorithm(public_key)
            self.key = load_pem_public_key(public_key.encode())

    @classmethod
    def from_settings(cls, settings) -> Identities:
        return cls(secret=settings.auth_jwt_secret, public_key=settings.auth_jwt_public_key)

    @property
    def open(self) -> bool:
        return self.algorithm is None

    def describe(self) -> str:
        """One phrase for the start-up log and /healthz."""
        if self.open:
            return "open (no AUTH_JWT_SECRET or AUTH_JWT_PUBLIC_KEY: anyone may connect)"
        return f"signed identities ({self.algorithm} tokens required)"

    def identify(self, auth: dict) -> Identity:
        if self.open:
            name, fold = normalize(auth.get("name"))
            return Identity(user=_open_user(auth.get("key"), fold), name=name, fold=fold,
                            rooms=None)
        return self._from_claims(self.verify(auth.get("token")))

    def verify(self, token) -> dict:
        """The claims of a valid token; :class:`AuthRefused` saying why otherwise."""
        if not isinstance(token, str) or not token:
            raise AuthRefused("a token is required (auth.token): this chat accepts signed "
                              "identities only")
        if len(token) > MAX_TOKEN:
            raise AuthRefused(f"token refused: longer than {MAX_TOKEN} characters")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthRefused("token refused: malformed (not a JWT)") from None
        alg = header.get("alg")
        if not isinstance(alg, str):
            raise AuthRefused("token refused: malformed (its header names no algorithm)")
        if alg.lower() == "none":
            raise AuthRefused("token refused: alg none (an unsigned token is never accepted)")
        if alg != self.algorithm:
            if (alg in HMAC_ALGORITHMS) != (self.algorithm in HMAC_ALGORITHMS):
                raise AuthRefused(f"token refused: algorithm confusion ({alg} token; this "
                                  f"chat verifies {self.algorithm} only)")
            raise AuthRefused(f"token refused: algorithm {alg[:16]!r} is not accepted "
                              f"(expected {self.algorithm})")
        try:
            return jwt.decode(token, self.key, algorithms=[self.algorithm],
                              options={"require": ["exp", "sub"], "verify_aud": False})
        except jwt.ExpiredSignatureError:
            raise AuthRefused("token refused: expired (exp is past)") from None
        except jwt.InvalidSignatureError:
            raise AuthRefused("token refused: bad signature (signed with another key, or "
                              "altered)") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthRefused(f"token refused: it has no {exc.claim} claim") from None
        except jwt.ImmatureSignatureError:
            raise AuthRefused("token refused: not valid yet (nbf is ahead)") from None
        except jwt.PyJWTError as exc:
            raise AuthRefused(f"token refused: {str(exc)[:80]}") from None

    @staticmethod
    def _from_claims(claims: dict) -> Identity:
        sub = claims["sub"]
        if not isinstance(sub, str) or not 1 <= len(sub) <= MAX_SUB or not sub.isprintable():
            raise AuthRefused(f"token refused: sub must be 1 to {MAX_SUB} printable characters")
        try:
            name = clean_name(claims.get("name"))
        except ProtocolError as exc:
            raise AuthRefused(f"token refused: its name claim: {exc}") from None
        rooms = claims.get("rooms")
        if rooms is not None:
            if not isinstance(rooms, list) or len(rooms) > MAX_ALLOWED_ROOMS:
                raise AuthRefused(f"token refused: rooms must be a list of at most "
                                  f"{MAX_ALLOWED_ROOMS} room names")
            try:
                # clean_room(None) would mean the default room: not here.
                rooms = frozenset(clean_room(r if r is not None else 0) for r in rooms)
            except ProtocolError:
                raise AuthRefused(f"token refused: rooms must hold room names of 1 to "
                                  f"{MAX_ROOM_LENGTH} printable characters") from None
        return Identity(user=sub, name=name, fold=None, rooms=rooms)


def _open_user(key, fold: str) -> str:
    """Open mode: the person a connection is, from its ``auth.key`` and the
    name it goes by (one browser's tabs under two names are two people)."""
    if key is None:
        key = secrets.token_hex(16)  # a person of its own
    low, high = OPEN_KEY_LENGTH
    if (not isinstance(key, str) or not low <= len(key) <= high or not key.isascii()
            or not key.isprintable()):
        raise ProtocolError(f"key must be {low} to {high} printable ASCII characters")
    return "k" + hashlib.sha256(f"{key}\n{fold}".encode()).hexdigest()[:15]
