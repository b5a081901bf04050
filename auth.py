"""API keys: minting, hashing, checking, and the decorator that guards the API routes.

A key is `lk_` followed by 43 URL-safe characters (32 random bytes). The database holds
only its first characters (the prefix, to find it and to show it in `keys list`) and
the SHA-256 of the whole key. The key itself is shown once, when minted, and never
logged.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import secrets
import unicodedata
from collections.abc import Callable
from typing import Any, TypeVar

from flask import current_app, g, request
from werkzeug.datastructures import WWWAuthenticate
from werkzeug.exceptions import Unauthorized

import models

KEY_TAG = "lk_"
PREFIX_LENGTH = len(KEY_TAG) + 8
# What `mint_key` makes. Anything else is not looked up at all, so that a stray secret
# pasted into the header never reaches a query (or peewee's debug log of it).
MINTED_KEY = re.compile(r"lk_[A-Za-z0-9_-]{43}")

View = TypeVar("View", bound=Callable[..., Any])


def hash_key(key: str) -> str:
    # A key carries 256 random bits, so a plain (fast) hash cannot be brute-forced;
    # surrogateescape keeps any header byte hashable.
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def mint_key() -> str:
    return KEY_TAG + secrets.token_urlsafe(32)


def key_prefix(key: str) -> str:
    return key[:PREFIX_LENGTH]


ORGANIZATION_MAX_LENGTH = models.Organization.name.max_length
# Control characters (line breaks, ESC, DEL), format characters (bidirectional overrides,
# zero-width ones), line and paragraph separators, and surrogates (bytes of a command
# line that are not UTF-8): each could make a name look like another, or forge lines
# where names are listed.
_UNSHOWABLE = {"Cc", "Cf", "Cs", "Zl", "Zp"}


def check_organization_name(name: str) -> str:
    """`name` when it can name an organization; else ValueError saying why."""
    if not name or not name.strip():
        raise ValueError("an organization name cannot be empty")
    if len(name) > ORGANIZATION_MAX_LENGTH:
        raise ValueError(
            f"an organization name is at most {ORGANIZATION_MAX_LENGTH} characters"
            f" (this one has {len(name)})"
        )
    if name != name.strip():
        raise ValueError("an organization name cannot begin or end with a space")
    for character in name:
        if unicodedata.category(character) in _UNSHOWABLE:
            raise ValueError(
                "an organization name cannot hold control or invisible characters"
                f" (it holds U+{ord(character):04X})"
            )
    return name


def create_key(organization: str) -> str:
    """Mint a key for `organization` (created when new) and return it, the only time it
    is seen. Raises ValueError for a name check_organization_name refuses."""
    check_organization_name(organization)
    organization_id = models.ensure_organization(organization)
    while True:
        key = mint_key()
        # A prefix collision (48 random bits) is next to impossible, but the prefix is
        # unique in the table, so make sure rather than fail.
        if models.find_active_key(key_prefix(key)) is None:
            models.add_api_key(organization_id, key_prefix(key), hash_key(key))
            return key


def bearer_token(header: str | None) -> str | None:
    """The credentials of an `Authorization: Bearer <key>` header (scheme in any case)."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    token = token.strip(" ")
    if scheme.lower() != "bearer" or not token:
        return None
    return token


class KeyChecker:
    """Resolves a presented key to its organization id, comparing hashes in constant time.

    `env_key`, when given, is one more key of the default organization, held only as a
    hash in memory (the `API_KEY` setting).
    """

    def __init__(self, env_key: str | None, default_organization_id: int | None = None):
        self._env_hash = hash_key(env_key) if env_key else None
        self.default_organization_id = default_organization_id

    def organization_for(self, key: str) -> int | None:
        presented = hash_key(key)
        if self._env_hash is not None and hmac.compare_digest(presented, self._env_hash):
            return self.default_organization_id
        if not MINTED_KEY.fullmatch(key):
            return None
        found = models.find_active_key(key_prefix(key))
        if found is not None and hmac.compare_digest(presented, found[1]):
            return found[0]
        return None


def unauthorized() -> Unauthorized:
    return Unauthorized(www_authenticate=WWWAuthenticate("Bearer"))


def require_api_key(view: View) -> View:
    """Admit the request only with a valid key; puts the caller's organization id on
    `g.organization_id`. Runs before the body is read, so a bad key is a 401 whatever
    the body."""

    @functools.wraps(view)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        token = bearer_token(request.headers.get("Authorization"))
        checker: KeyChecker = current_app.extensions["customers.keys"]
        organization_id = None if token is None else checker.organization_for(token)
        if organization_id is None:
            raise unauthorized()
        g.organization_id = organization_id
        return view(*args, **kwargs)

    return guarded  # type: ignore[return-value]
