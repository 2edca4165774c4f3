"""Short codes: the shape every code has, the reserved words, and random generation."""

from __future__ import annotations

import re
import secrets
import string

ALPHABET = string.ascii_letters + string.digits
GENERATED_LENGTH = 7
MAX_CODE_LENGTH = 64

# Every code, alias or generated, has this shape; anything else cannot name a link.
CODE_SHAPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")

# Paths the service answers itself, compared case-insensitively.
RESERVED = frozenset(
    {
        "api",
        "healthz",
        "readyz",
        "metrics",
        "static",
        "favicon.ico",
        "robots.txt",
        "index.html",
        "openapi.json",
    }
)


def is_code(candidate: str) -> bool:
    return CODE_SHAPE.fullmatch(candidate) is not None


def is_reserved(candidate: str) -> bool:
    return candidate.lower() in RESERVED


def generate(length: int = GENERATED_LENGTH) -> str:
    """A code from the OS's CSPRNG: 62**7 is about 3.5e12 codes, so guessing is hopeless."""
    while True:
        code = _draw(length)
        if not is_reserved(code):
            return code


# Bytes below this fall on every character of the alphabet equally often (4 x 62); the rest
# are drawn again, so that no character is likelier than another.
_EVEN_BELOW = 256 - 256 % len(ALPHABET)


def _draw(length: int) -> str:
    """`length` characters of the alphabet, uniformly, from one read of the CSPRNG (a few
    spare bytes cover the rare ones drawn again), not one read a character."""
    chars: list[str] = []
    while len(chars) < length:
        randoms = secrets.token_bytes(length + 2)
        chars += [ALPHABET[byte % len(ALPHABET)] for byte in randoms if byte < _EVEN_BELOW]
    return "".join(chars[:length])
