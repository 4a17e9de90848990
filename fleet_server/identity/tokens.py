"""Secrets for people and devices: API tokens and one-time enrollment tokens.

A token is 32 random bytes, URL-safe base64, with a prefix that says what it is
(``cfa_`` API token of a person, ``cfe_`` enrollment token). Only its SHA-256 is stored,
so a copy of the database opens nothing; tokens are random enough that a plain hash is
the right tool (no password stretching needed). Tokens are never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

API_PREFIX = "cfa_"
ENROLL_PREFIX = "cfe_"
_TOKEN_BYTES = 32
MAX_TOKEN_LEN = 80


def new_token(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(_TOKEN_BYTES)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def well_formed(token: str, prefix: str) -> bool:
    return token.startswith(prefix) and 20 < len(token) <= MAX_TOKEN_LEN and token.isascii()


def same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
