"""TLS (``wss://``): the server's ``ssl.SSLContext`` made from ``[tls]`` in the config.

``server_context`` loads the certificate chain and private key that ``tls.cert_file``
and ``tls.key_file`` name (PEM) into a server-side context that speaks TLS 1.2 or newer,
or returns ``None`` when both are empty (plain ``ws://``). The server wraps its
listeners in ``trio.SSLListener`` with it (feed/server.py; with ``--workers N`` each
worker wraps its own); the TLS handshake then happens on the first read of the request
head, within ``server.handshake_timeout_ms`` like the rest of the head, so a client that
stalls in the middle of it is dropped like any other slowloris.

Exceptions::

    ConfigError     a file is missing, unreadable, not PEM, encrypted, or the key does
                    not match the certificate (the message names the setting)
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path

from feed.config import ConfigError, TlsConfig


def server_context(config: TlsConfig) -> ssl.SSLContext | None:
    """The context for serving ``wss://``, or ``None`` without TLS. Raises
    ``ConfigError``."""
    cert, key = config.cert_file, config.key_file
    if not cert and not key:
        return None
    if not cert or not key:
        missing, given = ("tls.cert_file", "tls.key_file") if not cert else \
            ("tls.key_file", "tls.cert_file")
        raise ConfigError(f"{missing}: needed as well as {given} to serve wss://")
    for name, path in (("tls.cert_file", cert), ("tls.key_file", key)):
        try:
            Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"{name}: cannot read {path}: {exc.strerror or exc}") from None
    try:  # a throwaway context, to tell a bad certificate file from a bad key file
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_verify_locations(cafile=cert)
    except ssl.SSLError:
        raise ConfigError(f"tls.cert_file: no PEM certificate in {cert}") from None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key, password=_encrypted(key))
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ConfigError(f"tls.key_file: {key} is not the key of the certificate in "
                              f"{cert}") from None
        raise ConfigError(f"tls.key_file: no PEM private key in {key} ({exc})") from None
    return context


def _encrypted(key: str) -> Callable[[], bytes]:
    """A password callback that refuses, instead of prompting on the terminal."""
    def refuse() -> bytes:
        raise ConfigError(f"tls.key_file: {key} is encrypted; give the key unencrypted "
                          "(readable by the server's user only)")
    return refuse
