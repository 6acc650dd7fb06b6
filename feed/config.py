"""Settings: configs/default.toml's schema, its loading and its checking.

Every setting has a type, a range and a default here; configs/default.toml lists them
all with a comment each. ``load_config`` refuses unknown sections and keys and bad
values with a ``ConfigError`` that names the key; ``Config.with_overrides`` applies
command-line flags on top.

Exceptions::

    ConfigError         the file or a flag holds an unknown key or a bad value
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from replay.window import parse_time


class ConfigError(ValueError):
    """A setting is unknown or has a bad value; the message names it."""


def _positive(value: float) -> bool:
    return value > 0


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8765
    max_connections: int = 10_000
    max_handshake_bytes: int = 16_384
    handshake_timeout_ms: int = 5_000
    max_message_bytes: int = 65_536
    max_fragments: int = 1_024
    heartbeat_ms: int = 1_000
    ping_interval_ms: int = 20_000
    pong_timeout_ms: int = 20_000
    flush_pause_max_ms: float = 4.0
    flush_pause_factor: float = 4.0
    close_timeout_ms: int = 2_000
    shutdown_timeout_ms: int = 2_000
    workers: int = 1


MAX_WORKERS = 64
"""Most server processes ``server.workers`` allows: more than a host's cores is waste."""


@dataclass(frozen=True, slots=True)
class CompressionConfig:
    enabled: bool = True
    level: int = 6


@dataclass(frozen=True, slots=True)
class ClientConfig:
    max_queued_bytes: int = 4 << 20
    max_queue_age_ms: int = 2_000
    max_behind_ms: int = 10_000
    max_subscriptions: int = 1_000
    request_rate: float = 50.0
    request_burst: int = 100
    write_batch_bytes: int = 256 * 1024


@dataclass(frozen=True, slots=True)
class FeedConfig:
    files: tuple[str, ...] = ()
    speed: str = "1"
    loop: bool = False
    start: str = ""
    end: str = ""
    symbols: tuple[str, ...] = ()
    synthetic_rate: int = 0
    synthetic_symbols: int = 10
    seed: int = 0
    stale_after_ms: int = 5_000


@dataclass(frozen=True, slots=True)
class AccessConfig:
    anonymous: bool = True
    keys_file: str = ""
    origins: tuple[str, ...] = ()
    max_connections_per_address: int = 0


@dataclass(frozen=True, slots=True)
class TlsConfig:
    cert_file: str = ""
    key_file: str = ""

    @property
    def enabled(self) -> bool:
        """True when the server serves ``wss://`` (feed/tls.py checks the files)."""
        return bool(self.cert_file or self.key_file)


RECORD_EXTENSIONS = (".ticks.zst", ".ticks.gz", ".ticks")


@dataclass(frozen=True, slots=True)
class RecordConfig:
    dir: str = ""
    rotate_bytes: int = 256 << 20
    rotate_seconds: float = 3600.0
    max_buffered_events: int = 100_000
    flush_ms: int = 500
    extension: str = ".ticks.zst"


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    compression: CompressionConfig = field(default_factory=CompressionConfig)
    client: ClientConfig = field(default_factory=ClientConfig)
    feed: FeedConfig = field(default_factory=FeedConfig)
    record: RecordConfig = field(default_factory=RecordConfig)
    access: AccessConfig = field(default_factory=AccessConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)

    def with_overrides(self, overrides: Mapping[str, Any]) -> Config:
        """A copy with ``{"section.key": value}`` overrides applied and checked."""
        sections: dict[str, dict[str, Any]] = {}
        for dotted, value in overrides.items():
            section, key = dotted.split(".", 1)
            sections.setdefault(section, {})[key] = value
        return _build(sections, base=self)


def parse_speed(text: str) -> float | None:
    """A replay speed: a positive multiple of real time, or ``None`` for ``max``."""
    if text == "max":
        return None
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"feed.speed: expected a positive number or \"max\", got {text!r}")\
            from None
    if not value > 0:
        raise ConfigError(f"feed.speed: expected a positive number or \"max\", got {text!r}")
    return value


def parse_time_setting(name: str, text: str) -> int | None:
    """``feed.start`` / ``feed.end``: ``None`` when empty, else nanoseconds since the
    epoch from ISO-8601 or an integer (see ``replay.window.parse_time``)."""
    if not text:
        return None
    try:
        return parse_time(text)
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None


_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "server.port": (lambda v: 0 <= v <= 65535, "a port number from 0 to 65535"),
    "compression.level": (lambda v: 1 <= v <= 9, "a zlib level from 1 to 9"),
    "server.flush_pause_max_ms": (lambda v: 0 <= v <= 100, "milliseconds from 0 to 100"),
    "server.flush_pause_factor": (lambda v: 0 <= v <= 20, "a factor from 0 to 20"),
    "feed.synthetic_rate": (lambda v: v >= 0, "events per second, 0 or more"),
    "feed.synthetic_symbols": (lambda v: 1 <= v <= 10_000, "from 1 to 10000 symbols"),
    "feed.seed": (lambda v: True, "an integer"),
    "feed.stale_after_ms": (lambda v: v >= 0, "milliseconds, 0 (never stale) or more"),
    "server.host": (lambda v: bool(v), "a host name or address"),
    "server.workers": (lambda v: 1 <= v <= MAX_WORKERS,
                       f"a number of processes from 1 to {MAX_WORKERS}"),
    "record.rotate_bytes": (lambda v: v >= 0, "bytes, 0 (no rotation by size) or more"),
    "record.rotate_seconds": (lambda v: v >= 0, "seconds, 0 (no rotation by time) or more"),
    "record.flush_ms": (lambda v: 1 <= v <= 800, "milliseconds from 1 to 800"),
    "access.max_connections_per_address": (lambda v: v >= 0,
                                           "connections, 0 (no limit of its own) or more"),
    "access.origins": (lambda v: all(_is_origin(o) for o in v),
                       'origins such as "https://app.example.com" (scheme://host[:port])'),
    "record.extension": (lambda v: v in RECORD_EXTENSIONS,
                         f"one of {', '.join(RECORD_EXTENSIONS)}"),
}

_SECTIONS: dict[str, type[Any]] = {
    "server": ServerConfig, "compression": CompressionConfig,
    "client": ClientConfig, "feed": FeedConfig, "record": RecordConfig,
    "access": AccessConfig, "tls": TlsConfig,
}


def _is_origin(text: str) -> bool:
    scheme, sep, rest = text.partition("://")
    return bool(sep) and scheme in ("http", "https") and bool(rest) and "/" not in rest


def _check_value(name: str, default: Any, value: Any) -> Any:
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{name}: expected true or false, got {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name}: expected a number, got {value!r}")
        value = float(value)
    elif isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{name}: expected a string, got {value!r}")
    elif isinstance(default, tuple):
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{name}: expected a list of strings, got {value!r}")
        value = tuple(value)
    check = _CHECKS.get(name)
    if check is not None:
        if not check[0](value):
            raise ConfigError(f"{name}: expected {check[1]}, got {value!r}")
    elif isinstance(value, (int, float)) and not _positive(value):
        raise ConfigError(f"{name}: expected a positive number, got {value!r}")
    if name == "feed.speed":
        parse_speed(value)
    elif name in ("feed.start", "feed.end"):
        parse_time_setting(name, value)
    return value


def _build(data: Mapping[str, Any], base: Config) -> Config:
    built: dict[str, Any] = {}
    for section, values in data.items():
        cls = _SECTIONS.get(section)
        if cls is None:
            raise ConfigError(f"unknown section [{section}]; expected one of "
                              f"{', '.join(_SECTIONS)}")
        if not isinstance(values, Mapping):
            raise ConfigError(f"[{section}] must be a table")
        current = getattr(base, section)
        known = {f.name for f in dataclasses.fields(cls)}
        changes: dict[str, Any] = {}
        for key, value in values.items():
            name = f"{section}.{key}"
            if key not in known:
                raise ConfigError(f"unknown setting {name}")
            changes[key] = _check_value(name, getattr(current, key), value)
        built[section] = dataclasses.replace(current, **changes)
    return dataclasses.replace(base, **built)


def read_toml(path: Path, what: str, error: type[ValueError]) -> dict[str, Any]:
    """A TOML file's tables; ``error`` (naming ``what`` the file is) when it cannot be
    read or is not TOML."""
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{path}: not valid TOML: {exc}") from None


def load_config(path: Path | None) -> Config:
    """Load and check a TOML config file (``None``: the built-in defaults)."""
    if path is None:
        return Config()
    return _build(read_toml(path, "config", ConfigError), base=Config())
