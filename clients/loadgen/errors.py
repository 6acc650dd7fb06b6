"""What ends a load run without figures.

Exceptions::

    LoadError            the run could not be measured (bad URL, refused handshake,
     |                   unknown symbol, a worker died, the spawned server never listened)
     +-- FrameError      the server sent bytes that are not a valid server frame
"""

from __future__ import annotations


class LoadError(Exception):
    """The run could not be measured; the message says why, for a person."""


class FrameError(LoadError):
    """The server sent bytes that are not a valid (unmasked) server frame."""
