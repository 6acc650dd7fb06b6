"""Who may connect and what they may have: API keys, their grants, and browser origins.

Pure: no IO but ``load_keys`` reading the keys file. A key is a secret string that a
client presents in the opening handshake, as ``Authorization: Bearer KEY`` or as the
query parameter ``token=KEY`` (browsers cannot set headers on a WebSocket). The keys
file stores only each key's SHA-256, with what the key may use::

    [[key]]
    name = "alice"                      # shown in logs, never the key itself
    sha256 = "9f86d081884c7d65..."      # `tickwire keys new alice` makes one
    symbols = ["BTCUSDT", "ETHUSDT"]    # or ["*"], the default: every symbol
    channels = ["book", "bbo"]          # or ["*"], the default: every channel
    max_connections = 5                 # at once; 0, the default: no limit of its own

Exceptions::

    ValueError
    └── AccessError     the keys file is unreadable or holds a bad entry
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from feed.config import read_toml
from feed.protocol import CHANNELS

ALL = "*"
MAX_KEYS = 100_000


class AccessError(ValueError):
    """The keys file cannot be read, or one of its entries is malformed."""


@dataclass(frozen=True, slots=True)
class Grant:
    """What one key (or the anonymous client) may use. ``None``: everything."""

    name: str
    symbols: frozenset[str] | None = None
    channels: frozenset[str] | None = None
    max_connections: int = 0

    def allows(self, channel: str, symbol: str) -> bool:
        """True when this grant covers ``channel`` for ``symbol``."""
        return ((self.channels is None or channel in self.channels)
                and (self.symbols is None or symbol in self.symbols))

    def channels_for(self, symbol: str) -> list[str]:
        """The channels of ``symbol`` this grant covers, in protocol order."""
        if self.symbols is not None and symbol not in self.symbols:
            return []
        return [c for c in CHANNELS if self.channels is None or c in self.channels]


ANONYMOUS = Grant("anonymous")
"""A client that presents no key, where anonymous access is on: everything."""


def key_hash(key: str) -> str:
    """The hex SHA-256 of a key, as the keys file stores it."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    """A fresh random key (256 bits, URL-safe, so it can go in a query string)."""
    return secrets.token_urlsafe(32)


class KeyRing:
    """The known keys, by hash."""

    def __init__(self, grants: Mapping[str, Grant] | None = None) -> None:
        self._by_hash = dict(grants or {})

    def __len__(self) -> int:
        return len(self._by_hash)

    def grant_for(self, key: str) -> Grant | None:
        """The grant of a presented key; ``None`` for a key not in the ring."""
        return self._by_hash.get(key_hash(key))


def load_keys(path: Path) -> KeyRing:
    """Read a keys file (see the module docstring). Raises ``AccessError``."""
    data = read_toml(path, "keys file", AccessError)
    unknown = set(data) - {"key"}
    if unknown:
        raise AccessError(f"{path}: unknown table {sorted(unknown)[0]!r}; keys are [[key]]")
    entries = data.get("key", [])
    if not isinstance(entries, list) or len(entries) > MAX_KEYS:
        raise AccessError(f"{path}: [[key]] must be a list of at most {MAX_KEYS} tables")
    grants: dict[str, Grant] = {}
    names: set[str] = set()
    for number, entry in enumerate(entries, 1):
        digest, grant = _entry(entry, f"{path}: key {number}")
        if digest in grants:
            raise AccessError(f"{path}: key {number} ({grant.name}) repeats the sha256 of "
                              f"{grants[digest].name}")
        if grant.name in names:  # connections are counted per name
            raise AccessError(f"{path}: key {number} repeats the name {grant.name!r}")
        grants[digest] = grant
        names.add(grant.name)
    return KeyRing(grants)


_FIELDS = {"name", "sha256", "symbols", "channels", "max_connections"}


def _entry(entry: Any, where: str) -> tuple[str, Grant]:
    if not isinstance(entry, dict):
        raise AccessError(f"{where}: not a table")
    unknown = set(entry) - _FIELDS
    if unknown:
        raise AccessError(f"{where}: unknown field {sorted(unknown)[0]!r}")
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise AccessError(f"{where}: \"name\" must be a non-empty string")
    digest = entry.get("sha256")
    if not (isinstance(digest, str) and len(digest) == 64
            and all(c in "0123456789abcdef" for c in digest)):
        raise AccessError(f"{where} ({name}): \"sha256\" must be 64 lowercase hex digits "
                          "(the key's SHA-256, never the key)")
    limit = entry.get("max_connections", 0)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise AccessError(f"{where} ({name}): \"max_connections\" must be 0 or more")
    symbols = _names(entry.get("symbols", [ALL]), f"{where} ({name}): \"symbols\"")
    channels = _names(entry.get("channels", [ALL]), f"{where} ({name}): \"channels\"")
    if channels is not None and not channels <= set(CHANNELS):
        bad = sorted(channels - set(CHANNELS))[0]
        raise AccessError(f"{where} ({name}): unknown channel {bad!r}; channels are "
                          f"{', '.join(CHANNELS)}")
    return digest, Grant(name, symbols, channels, limit)


def _names(value: Any, what: str) -> frozenset[str] | None:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise AccessError(f"{what} must be a list of names, or [\"*\"]")
    if ALL in value:
        return None
    return frozenset(value)


def presented_key(headers: Mapping[str, str], target: str) -> str | None:
    """The key a handshake presents: ``Authorization: Bearer KEY``, else the query
    parameter ``token``; ``None`` when it presents none. An ``Authorization`` header of
    another scheme, or an empty one, presents the empty key (which no key matches)."""
    authorization = headers.get("authorization")
    if authorization is not None:
        scheme, _, key = authorization.strip().partition(" ")
        return key.strip() if scheme.lower() == "bearer" else ""
    _, _, query = target.partition("?")
    # No max_num_fields: it raises past its count, and the request head is bounded
    # already (server.max_handshake_bytes).
    tokens = parse_qs(query, keep_blank_values=True).get("token")
    if tokens is None:
        return None
    return tokens[0]


def origin_allowed(origin: str | None, allowed: Iterable[str]) -> bool:
    """Whether a handshake's ``Origin`` may connect: always when the allow-list is empty
    or the client sent none (not a browser); else only an exact listed origin
    (``https://app.example.com``, compared without case)."""
    allowed = tuple(allowed)
    if not allowed or origin is None:
        return True
    return origin.strip().lower() in {a.lower() for a in allowed}
