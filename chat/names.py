"""Display names in open mode: normalized, and compared as they look.

In open mode (no signed identities, ``chat/auth.py``) a name is whatever the
client says, so the chat at least makes sure that two people live in one
room cannot *look* like each other.  A name is

1. cleaned (``protocol.clean_name``: trimmed, 1-32 printable characters),
2. normalized with Unicode NFKC, which is what the room then shows: a name in
   fullwidth letters (U+FF41...) is shown in plain Latin ones,
3. refused if nothing of it would show (Hangul fillers, braille blanks and
   the like are printable but render blank),
4. folded for comparison: each character replaced by one
   representative of its confusables class (Unicode's confusables.txt, as the
   ``confusable_homoglyphs`` package ships it), then case-folded and
   replaced again.  "ana" with a Cyrillic a (U+0430)
   and the Latin "ana" both fold to "ana"; "I", "l", "1" and "|" fold alike.

The fold decides who may enter: ``presence.py`` refuses a connection whose
fold is held, in that room, by another live person.

The confusables data maps characters to look-alikes in both directions but
not transitively, so the classes are built once, at import, by joining every
character with its single-character look-alikes (union-find); each class is
represented by its ASCII lower-case letter or digit when it has one, so a
fold reads like the Latin name it imitates.
"""

from __future__ import annotations

import unicodedata

from confusable_homoglyphs.confusables import confusables_data

from .protocol import MAX_NAME_LENGTH, ProtocolError, clean_name

# Printable, yet drawn as nothing (or as a blank box of nothing).
BLANK = frozenset("\u115f\u1160\u3164\uffa0\u2800\u180e\u17b4\u17b5")
INVISIBLE_CATEGORIES = frozenset({"Zs", "Zl", "Zp", "Cc", "Cf", "Cs", "Co", "Cn", "Mn", "Me"})


def _classes() -> dict[str, str]:
    parent: dict[str, str] = {}

    def find(c: str) -> str:
        while parent.get(c, c) != c:
            parent[c] = parent.get(parent[c], parent[c])  # path halving
            c = parent[c]
        return c

    for char, looks in confusables_data.items():
        if len(char) != 1:
            continue
        for look in looks:
            if len(look["c"]) == 1:
                a, b = find(char), find(look["c"])
                if a != b:
                    parent[a] = b
    members: dict[str, list[str]] = {}
    for char in parent.keys() | set(parent.values()):
        members.setdefault(find(char), []).append(char)
    prototype = {}
    for group in members.values():
        best = min(group, key=lambda c: (not (c.isascii() and c.isalnum()), not c.islower(), c))
        for char in group:
            prototype[char] = best
    return prototype


PROTOTYPE = _classes()


def visible(char: str) -> bool:
    return char not in BLANK and unicodedata.category(char) not in INVISIBLE_CATEGORIES


def fold(name: str) -> str:
    """``name`` as it looks: case-folded, each character its class's representative."""
    # Mapped before case-folding too: "I" looks like "l", its lower case does not.
    shown = "".join(PROTOTYPE.get(c, c) for c in unicodedata.normalize("NFKC", name))
    folded = unicodedata.normalize("NFKC", shown.casefold())
    return "".join(PROTOTYPE.get(c, c) for c in folded if visible(c) or c == " ")


def normalize(value) -> tuple[str, str]:
    """Return ``(name, fold)``: the name the room shows, and what it is compared by."""
    name = unicodedata.normalize("NFKC", clean_name(value)).strip()
    if not 1 <= len(name) <= MAX_NAME_LENGTH or not name.isprintable():
        # NFKC can lengthen a name (one ligature becomes three letters) or
        # turn a compatibility space into a plain one at its edges.
        raise ProtocolError(f"name must be 1 to {MAX_NAME_LENGTH} printable characters "
                            "after Unicode normalization (NFKC)")
    if not any(visible(c) for c in name):
        raise ProtocolError("name must show something: it has no visible character")
    return name, fold(name)
