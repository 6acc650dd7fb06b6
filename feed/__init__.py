"""tickwire: a low-latency market-data streaming server.

The server side lives here. Pure, IO-free modules (``events``, ``decimals``,
``checksum``, ``book``, ``protocol``, ``views``, ``config``) import neither trio nor
socket; only ``handshake``, ``wsconn``, ``server``, ``ingest``, ``recorder``,
``recorder_disk`` and ``cli`` touch IO.
"""

__version__ = "0.1.0"
